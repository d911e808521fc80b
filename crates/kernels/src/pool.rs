//! tuili's unstructured sparse layout (`Q8_0_U8` … `Q8_0_U120`): Q8_0 rows pruned without a
//! pattern, stored as keep-masks plus the kept values only.
//!
//! Unlike every other type a row is not a run of independent blocks: a row of n weights
//! (nsb = n / 128 super-blocks) with room for R values per 128 (the type's number) is
//!
//! ```text
//! heads: nsb × 24 bytes — per super-block its keep-mask (two little-endian u64: bit j of
//!        word h set when weight 64h + j is kept) and its four Q8_0 f16 scales
//! pool:  nsb × R bytes  — the row's kept int8 values in position order; the rest zero
//! ```
//!
//! x_i = d_{⌊i/32⌋} · q_k at a kept position i (k its rank among the row's kept positions),
//! 0 elsewhere. The values and scales are Q8_0's of the same row, so the layout decodes
//! exactly as its dense twin. Unstructured pruning (magnitude, Wanda: a fixed number per row)
//! keeps a different number in each super-block, so the values cannot sit in fixed slots per
//! block; one pool per row, with room for the row that keeps the most (rounded up to 8 per
//! 128: fifteen types), keeps every row the same size, which GGUF and the kernels' row
//! arithmetic need. A row keeping more than its room is malformed ([`overflow`]; the loader
//! refuses it). Every function here reads within its slices whatever the bytes hold, and
//! allocates only to pack a row with more non-zeros than its room (a dense row handed in).
//!
//! Because the pool belongs to the row, the functions take exactly one row.
//!
//! May not: know about files or models (the pruner chooses the room, the loader checks it).

use crate::blocks::{f16_le, BlockQ8_0, QK, QS};

/// Bytes of a super-block's head: its keep-mask and four scales.
pub const HEAD: usize = 24;

/// A row of `n` weights of `row.len()` bytes as (heads, pool), or `None` when `n` is not whole
/// super-blocks or the bytes are fewer than the heads.
pub fn split(row: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    if n == 0 || !n.is_multiple_of(QS) || row.len() < n / QS * HEAD {
        return None;
    }
    Some(row.split_at(n / QS * HEAD))
}

/// Super-block `sb`'s keep-mask (weights 0..64, 64..128) from the heads.
#[inline]
pub fn mask(heads: &[u8], sb: usize) -> [u64; 2] {
    let h = &heads[HEAD * sb..HEAD * sb + 16];
    let w = |k: usize| u64::from_le_bytes(std::array::from_fn(|i| h[8 * k + i]));
    [w(0), w(1)]
}

/// Block `b`'s (32 weights) keep-mask.
#[inline]
pub fn block_mask(heads: &[u8], b: usize) -> u32 {
    let m = mask(heads, b / 4)[b % 4 / 2];
    (m >> (32 * (b % 2))) as u32
}

/// Block `b`'s scale bits (f16) from the heads.
#[inline]
pub fn scale_bits(heads: &[u8], b: usize) -> u16 {
    let at = HEAD * (b / 4) + 16 + 2 * (b % 4);
    u16::from_le_bytes([heads[at], heads[at + 1]])
}

/// Where block `b`'s values start in the pool: the number of weights kept before it.
pub fn offset(heads: &[u8], b: usize) -> usize {
    (0..b)
        .map(|k| block_mask(heads, k).count_ones() as usize)
        .sum()
}

/// The first super-block of a row (`n` weights) whose kept values run past the pool — a
/// malformed row — or `None`.
pub fn overflow(row: &[u8], n: usize) -> Option<usize> {
    let Some((heads, pool)) = split(row, n) else {
        return Some(0);
    };
    let mut used = 0usize;
    for sb in 0..n / QS {
        let [lo, hi] = mask(heads, sb);
        used += (lo.count_ones() + hi.count_ones()) as usize;
        if used > pool.len() {
            return Some(sb);
        }
    }
    None
}

/// Byte-shuffle controls (`vpshufb`, NEON `tbl`) that expand eight pool bytes to the eight
/// positions of a mask byte m: for each set bit its rank among them (which pool byte), 0x80
/// (a zero in both instruction sets) for each clear bit.
pub static EXPAND8: [u64; 256] = expand8_table();

/// [`EXPAND8`]'s entry for mask byte `m` (also the base of the 4-of-8 kernels' controls).
pub const fn expand8(m: usize) -> u64 {
    let (mut v, mut rank, mut i) = (0u64, 0u64, 0);
    while i < 8 {
        let byte = if (m >> i) & 1 == 1 {
            rank += 1;
            rank - 1
        } else {
            0x80
        };
        v |= byte << (8 * i);
        i += 1;
    }
    v
}

const fn expand8_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut m = 0;
    while m < 256 {
        t[m] = expand8(m);
        m += 1;
    }
    t
}

/// Eight pool bytes from `k` on, little-endian (zeros past the pool's end).
#[inline]
pub fn eight(pool: &[u8], k: usize) -> u64 {
    match pool.get(k..k + 8) {
        Some(b) => u64::from_le_bytes(std::array::from_fn(|i| b[i])),
        None => u64::from_le_bytes(std::array::from_fn(|i| {
            pool.get(k + i).copied().unwrap_or(0)
        })),
    }
}

/// Value `k` of the pool, 0 past its end (a malformed row's extra positions read 0).
#[inline]
fn at(pool: &[u8], k: usize) -> i8 {
    pool.get(k).map_or(0, |&v| v as i8)
}

/// A row → its dense Q8_0 blocks (`out`: n / 32 of them), the dropped positions 0.
pub fn unpack(row: &[u8], out: &mut [BlockQ8_0]) {
    let n = out.len() * QK;
    let Some((heads, pool)) = split(row, n) else {
        return;
    };
    let mut k = 0;
    for (b, blk) in out.iter_mut().enumerate() {
        blk.d = scale_bits(heads, b).to_le_bytes();
        let m = block_mask(heads, b);
        for j in 0..QK {
            blk.qs[j] = if m >> j & 1 == 1 {
                k += 1;
                at(pool, k - 1) as u8
            } else {
                0
            };
        }
    }
}

/// Dense Q8_0 blocks → a row of this layout (`out`: its whole size, which sets the room): the
/// non-zero values are kept. A row with more of them than the room keeps those of largest
/// magnitude d·|q| (the earlier of equals) — the only case that allocates.
pub fn pack(blocks: &[BlockQ8_0], out: &mut [u8]) {
    pack_from(blocks.len(), |b| blocks[b], out)
}

/// f32 → a row of this layout (`dst`'s size sets the room): Q8_0's blocks of the row, packed
/// as [`pack`] does (each block quantized where it is needed, twice: no buffer).
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let block = |b: usize| {
        let mut tmp = [0u8; 34];
        crate::quant::q8_0_block(&src[QK * b..QK * (b + 1)], &mut tmp);
        let mut blk = BlockQ8_0 {
            d: [tmp[0], tmp[1]],
            qs: [0; QK],
        };
        blk.qs.copy_from_slice(&tmp[2..]);
        blk
    };
    pack_from(src.len() / QK, block, dst)
}

/// [`pack`] of the `nb` blocks `block(b)` gives.
fn pack_from(nb: usize, block: impl Fn(usize) -> BlockQ8_0, out: &mut [u8]) {
    let n = nb * QK;
    let nsb = n / QS;
    if n == 0 || !n.is_multiple_of(QS) || out.len() < nsb * HEAD {
        return;
    }
    let room = out.len() - nsb * HEAD;
    let count: usize = (0..nb)
        .map(|b| block(b).qs.iter().filter(|&&q| q != 0).count())
        .sum();
    // The weakest non-zeros past the room are dropped: (d·|q|, position) ranked.
    let mut dropped = vec![false; if count > room { n } else { 0 }];
    if count > room {
        let mut order: Vec<(f32, usize)> = Vec::with_capacity(count);
        for b in 0..nb {
            let blk = block(b);
            let d = f16_le(blk.d).abs();
            for (j, &q) in blk.qs.iter().enumerate().filter(|(_, &q)| q != 0) {
                order.push((d * (q as i8 as f32).abs(), QK * b + j));
            }
        }
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in &order[room..] {
            dropped[i] = true;
        }
    }
    let (heads, pool) = out.split_at_mut(nsb * HEAD);
    pool.fill(0);
    let mut k = 0;
    for sb in 0..nsb {
        let blocks: [BlockQ8_0; 4] = std::array::from_fn(|s| block(4 * sb + s));
        let mut m = [0u64; 2];
        for i in 0..QS {
            let q = blocks[i / QK].qs[i % QK];
            if q != 0 && !dropped.get(QS * sb + i).copied().unwrap_or(false) {
                m[i / 64] |= 1 << (i % 64);
                pool[k] = q;
                k += 1;
            }
        }
        let h = &mut heads[HEAD * sb..HEAD * (sb + 1)];
        h[..8].copy_from_slice(&m[0].to_le_bytes());
        h[8..16].copy_from_slice(&m[1].to_le_bytes());
        for (s, blk) in blocks.iter().enumerate() {
            h[16 + 2 * s..18 + 2 * s].copy_from_slice(&blk.d);
        }
    }
}

/// A row of this layout → f32 (`dst`: its n weights).
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    dst.fill(0.0);
    let Some((heads, pool)) = split(src, dst.len()) else {
        return;
    };
    let mut k = 0;
    for (b, y) in dst.chunks_exact_mut(QK).enumerate() {
        let d = half::f16::from_bits(scale_bits(heads, b)).to_f32();
        let m = block_mask(heads, b);
        for j in (0..QK).filter(|j| m >> j & 1 == 1) {
            y[j] = at(pool, k) as f32 * d;
            k += 1;
        }
    }
}

/// Σ_b d_w·d_a·Σ_{kept j} q·a_j of a row of `n` weights and a Q8 activation row (the scalar
/// reference: the same integer sums and float order as Q8_0's, so a row decodes exactly as
/// its dense twin).
pub fn dot(w: &[u8], n: usize, a: &crate::act::Q8Row) -> f32 {
    let Some((heads, pool)) = split(w, n).filter(|_| a.qs.len() >= n && a.d.len() * QK >= n) else {
        return f32::NAN;
    };
    let mut s = 0f32;
    let mut k = 0;
    for b in 0..n / QK {
        let m = block_mask(heads, b);
        let qa = &a.qs[b * QK..(b + 1) * QK];
        let mut acc = 0i32;
        for j in (0..QK).filter(|j| m >> j & 1 == 1) {
            acc += at(pool, k) as i32 * qa[j] as i32;
            k += 1;
        }
        s += half::f16::from_bits(scale_bits(heads, b)).to_f32() * a.d[b] * acc as f32;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, keep_every: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                if i % keep_every == 0 || i % 7 == 3 {
                    ((i * 37 % 101) as f32 - 50.0) / 17.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn pooled_row_is_its_dense_q8_0_twin() {
        let n = 512;
        let x = row(n, 3);
        let mut dense = vec![0u8; n / QK * 34];
        crate::quant::q8_0_row(&x, &mut dense);
        let nz = x.iter().filter(|v| **v != 0.0).count();
        let t = tuili_core::DType::q8_0_pooled(n as u64, nz as u64).unwrap();
        let mut p = vec![0u8; t.bytes_for(n as u64).unwrap() as usize];
        quantize_row(&x, &mut p);
        assert_eq!(overflow(&p, n), None);
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        crate::dequant::q8_0_row(&dense, &mut a);
        dequantize_row(&p, &mut b);
        assert_eq!(a, b);
        // Unpacked: the dense blocks byte for byte.
        let mut blocks = vec![
            BlockQ8_0 {
                d: [0; 2],
                qs: [0; QK]
            };
            n / QK
        ];
        unpack(&p, &mut blocks);
        let bytes: Vec<u8> = blocks
            .iter()
            .flat_map(|b| b.d.into_iter().chain(b.qs))
            .collect();
        assert_eq!(bytes, dense);
    }

    #[test]
    fn a_row_over_its_room_keeps_the_largest() {
        let n = 256;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 - 100.0) / 30.0).collect();
        let t = tuili_core::DType::Q8_0_U32;
        let mut p = vec![0u8; t.bytes_for(n as u64).unwrap() as usize];
        quantize_row(&x, &mut p);
        assert_eq!(overflow(&p, n), None);
        let mut y = vec![0f32; n];
        dequantize_row(&p, &mut y);
        assert_eq!(y.iter().filter(|v| **v != 0.0).count(), 64);
        let kept_min = y
            .iter()
            .filter(|v| **v != 0.0)
            .fold(f32::MAX, |m, v| m.min(v.abs()));
        let lost_max = x
            .iter()
            .zip(&y)
            .filter(|(_, v)| **v == 0.0)
            .fold(0f32, |m, (x, _)| m.max(x.abs()));
        // (Ranked by d·|q|: within half a quantum of |x|.)
        assert!(kept_min >= lost_max - 0.05, "{kept_min} {lost_max}");
        // More mask bits than room: malformed, and still read within bounds.
        p[0] = 0xFF;
        p[8] = 0xFF;
        p[HEAD] = 0xFF;
        assert!(overflow(&p, n).is_some());
        dequantize_row(&p, &mut y);
    }
}
