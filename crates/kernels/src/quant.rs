//! Scalar reference quantizers (ggml's `quantize_row_*_ref`) of the float and 32-value block
//! types, one function per type (the K-quants' are in `kquant`); the type table
//! (`crate::types`) points to them. Used by the GGUF writer, the tests and the quantizer.

use crate::blocks::*;

/// f32 → F32 bytes.
pub fn f32_row(src: &[f32], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(4).zip(src) {
        d.copy_from_slice(&s.to_le_bytes());
    }
}

/// f32 → F16 bytes (round to nearest).
pub fn f16_row(src: &[f32], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f16_to_le(*s));
    }
}

/// f32 → BF16 bytes (round to nearest even).
pub fn bf16_row(src: &[f32], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&half::bf16::from_f32(*s).to_bits().to_le_bytes());
    }
}

/// A row of f32 → blocks of type `B`, one block at a time with `block` (which takes the
/// block's elements and writes its bytes). The sizes are whole blocks
/// (`crate::types::quantize_row` checked).
pub(crate) fn block_row<B: Block>(
    src: &[f32],
    dst: &mut [u8],
    len: usize,
    block: fn(&[f32], &mut [u8]),
) {
    let bs = std::mem::size_of::<B>();
    for (d, x) in dst.chunks_exact_mut(bs).zip(src.chunks_exact(len)) {
        block(x, d);
    }
}

/// f32 → each block type's bytes (ggml's `quantize_row_*_ref`).
macro_rules! block_rows {
    ($($row:ident = $blk:ty, $len:expr, $block:path;)*) => {$(
        #[doc = concat!("f32 → ", stringify!($blk), " blocks.")]
        pub fn $row(src: &[f32], dst: &mut [u8]) {
            block_row::<$blk>(src, dst, $len, $block)
        }
    )*};
}

block_rows! {
    q8_0_row = BlockQ8_0, QK, q8_0_block;
    q8_0_48_row = BlockQ8_0S, QS, q8_0_48_block;
    q4_0_48_row = BlockQ4_0S, QS, q4_0_48_block;
    q8_0_24_row = BlockQ8_0P, QS, q8_0_24_block;
    q4_0_24_row = BlockQ4_0P, QS, q4_0_24_block;
    q4_0_row = BlockQ4_0, QK, q4_0_block;
    q4_1_row = BlockQ4_1, QK, q4_1_block;
    q5_0_row = BlockQ5_0, QK, q5_0_block;
    q5_1_row = BlockQ5_1, QK, q5_1_block;
    q8_k_row = BlockQ8K, QK_K, q8_k_block;
}

/// The element of largest magnitude, with its sign (the first of equals, as ggml's loops).
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut m = 0f32;
    for &v in x {
        if v.abs() > m.abs() {
            m = v;
        }
    }
    m
}

/// The keep-mask of 32 weights under N-of-M pruning (4 of 8, 2 of 4): in each group of `M`
/// the `N` of largest magnitude (ties: the lower position), so a row already pruned so keeps
/// exactly its non-zeros (and, where a group has fewer, its lowest-placed zeros).
pub(crate) fn keep_n_of_m<const N: usize, const M: usize>(x: &[f32]) -> u32 {
    let mut mask = 0u32;
    for (c, v) in x.chunks_exact(M).enumerate() {
        let mut order: [usize; M] = std::array::from_fn(|i| i);
        order.sort_by(|&a, &b| v[b].abs().total_cmp(&v[a].abs()).then(a.cmp(&b)));
        for &p in &order[..N] {
            mask |= 1 << (M * c + p);
        }
    }
    mask
}

/// A sparse super-block ([`Sparse`]) from 128 weights: each block of 32 is quantized by its
/// base type's `dense` block quantizer (scale and values as dense: the zeros take part in the
/// scale as they would there), `keep` chooses the kept positions, and only their values are
/// stored: `value(block, j)` reads value j of the dense block's bytes. The header is the
/// masks as they are (`CODES` false) or as 2:4 codes.
fn sparse_block<const Q4: bool, const CODES: bool>(
    x: &[f32],
    out: &mut [u8],
    keep: fn(&[f32]) -> u32,
    dense: fn(&[f32], &mut [u8]),
) {
    let hdr = if CODES { 12 } else { 16 };
    let mut tmp = [0u8; 34];
    let mut masks = [0u32; SPARSE_SUB];
    for (s, mask) in masks.iter_mut().enumerate() {
        let xs = &x[QK * s..QK * (s + 1)];
        *mask = keep(xs);
        dense(xs, &mut tmp);
        out[hdr + 2 * s..hdr + 2 * s + 2].copy_from_slice(&tmp[..2]);
        let qs = &mut out[hdr + 8..];
        for (k, j) in (0..QK).filter(|j| *mask >> j & 1 == 1).enumerate() {
            if Q4 {
                // Q4_0 value j (low nibbles 0..16, high 16..32); blocks 0, 1 into the low
                // nibbles of bytes 0..16, 16..32, blocks 2, 3 into the high ones.
                let u = (tmp[2 + j % 16] >> (4 * (j / 16))) & 0x0F;
                let (at, shift) = (16 * (s % 2) + k, 4 * (s / 2));
                qs[at] = (qs[at] & !(0x0F << shift)) | u << shift;
            } else {
                qs[16 * s + k] = tmp[2 + j];
            }
        }
    }
    if CODES {
        out[..12].copy_from_slice(&masks_codes(&masks));
    } else {
        for (s, m) in masks.iter().enumerate() {
            out[4 * s..4 * s + 4].copy_from_slice(&m.to_le_bytes());
        }
    }
}

/// Q8_0 pruned 4 of 8: the Q8_0 scales and values of the kept weights.
pub(crate) fn q8_0_48_block(x: &[f32], out: &mut [u8]) {
    sparse_block::<false, false>(x, out, keep_n_of_m::<4, 8>, q8_0_block)
}

/// Q4_0 pruned 4 of 8: the Q4_0 scales and nibbles of the kept weights.
pub(crate) fn q4_0_48_block(x: &[f32], out: &mut [u8]) {
    sparse_block::<true, false>(x, out, keep_n_of_m::<4, 8>, q4_0_block)
}

/// Q8_0 pruned 2 of 4, the positions as 3-bit codes.
pub(crate) fn q8_0_24_block(x: &[f32], out: &mut [u8]) {
    sparse_block::<false, true>(x, out, keep_n_of_m::<2, 4>, q8_0_block)
}

/// Q4_0 pruned 2 of 4, the positions as 3-bit codes.
pub(crate) fn q4_0_24_block(x: &[f32], out: &mut [u8]) {
    sparse_block::<true, true>(x, out, keep_n_of_m::<2, 4>, q4_0_block)
}

/// d = amax/127, q = round(x/d).
pub(crate) fn q8_0_block(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_to_le(d));
    for (o, v) in out[2..].iter_mut().zip(x) {
        *o = (v * id).round() as i8 as u8;
    }
}

/// d = max/−8 (max signed), q = min(15, trunc(x/d + 8.5)).
fn q4_0_block(x: &[f32], out: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_to_le(d));
    for j in 0..QK / 2 {
        let x0 = ((x[j] * id + 8.5) as i32).clamp(0, 15) as u8;
        let x1 = ((x[j + QK / 2] * id + 8.5) as i32).clamp(0, 15) as u8;
        out[2 + j] = x0 | (x1 << 4);
    }
}

/// d = (max − min)/15, m = min, q = min(15, trunc((x − min)/d + 0.5)).
fn q4_1_block(x: &[f32], out: &mut [u8]) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_to_le(d));
    out[2..4].copy_from_slice(&f16_to_le(min));
    for j in 0..QK / 2 {
        let x0 = (((x[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        let x1 = (((x[j + QK / 2] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        out[4 + j] = x0 | (x1 << 4);
    }
}

/// d = max/−16, q = min(31, trunc(x/d + 16.5)); bit 4 goes to qh.
fn q5_0_block(x: &[f32], out: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_to_le(d));
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let x0 = ((x[j] * id + 16.5) as i32).clamp(0, 31) as u8;
        let x1 = ((x[j + QK / 2] * id + 16.5) as i32).clamp(0, 31) as u8;
        out[6 + j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// d = (max − min)/31, m = min, 5-bit q.
fn q5_1_block(x: &[f32], out: &mut [u8]) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_to_le(d));
    out[2..4].copy_from_slice(&f16_to_le(min));
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let x0 = (((x[j] - min) * id + 0.5) as i32).clamp(0, 31) as u8;
        let x1 = (((x[j + QK / 2] - min) * id + 0.5) as i32).clamp(0, 31) as u8;
        out[8 + j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    out[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// iscale = −128/max (max signed), q = min(127, round(iscale·x)), d = 1/iscale; bsums are the
/// sums of each 16 quants.
fn q8_k_block(x: &[f32], out: &mut [u8]) {
    let max = signed_absmax(x);
    if max == 0.0 {
        out.fill(0);
        return;
    }
    let iscale = -128.0 / max;
    out[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    let mut q = [0i8; QK_K];
    for (qi, v) in q.iter_mut().zip(x) {
        *qi = (iscale * v).round().min(127.0) as i8;
    }
    for (o, qi) in out[4..4 + QK_K].iter_mut().zip(q.iter()) {
        *o = *qi as u8;
    }
    for g in 0..QK_K / 16 {
        let s: i16 = q[g * 16..g * 16 + 16].iter().map(|&v| v as i16).sum();
        out[4 + QK_K + 2 * g..4 + QK_K + 2 * g + 2].copy_from_slice(&s.to_le_bytes());
    }
}
