//! Scalar reference dequantization of every supported GGML type to f32: one function per type
//! (`*_row`, whole rows of bytes; `deq_*`, typed blocks), which the type table
//! (`crate::types`) points to.
//!
//! The formulas are ggml's (`dequantize_row_*` in ggml-quants.c); the comments give the maths.

use crate::blocks::*;

/// F32 bytes → f32.
pub fn f32_row(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

/// F16 bytes → f32.
pub fn f16_row(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16_le([s[0], s[1]]);
    }
}

/// BF16 bytes → f32.
pub fn bf16_row(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16_le([s[0], s[1]]);
    }
}

/// A row of blocks (bytes) → f32, for each block type: the bytes are whole blocks
/// (`crate::types::dequantize_row` checked), so the view always succeeds.
macro_rules! block_rows {
    ($($row:ident = $deq:ident;)*) => {$(
        #[doc = concat!("Bytes of blocks → f32 (", stringify!($deq), ").")]
        pub fn $row(src: &[u8], dst: &mut [f32]) {
            $deq(as_blocks(src).unwrap_or(&[]), dst)
        }
    )*};
}

block_rows! {
    q4_0_row = deq_q4_0;
    q4_1_row = deq_q4_1;
    q5_0_row = deq_q5_0;
    q5_1_row = deq_q5_1;
    q8_0_row = deq_q8_0;
    q2_k_row = deq_q2_k;
    q3_k_row = deq_q3_k;
    q4_k_row = deq_q4_k;
    q5_k_row = deq_q5_k;
    q6_k_row = deq_q6_k;
    q8_k_row = deq_q8_k;
}

/// x[j] = d·(lo(q[j]) − 8), x[j+16] = d·(hi(q[j]) − 8).
pub fn deq_q4_0(blocks: &[BlockQ4_0], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        for j in 0..QK / 2 {
            y[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            y[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// x = d·q + m.
pub fn deq_q4_1(blocks: &[BlockQ4_1], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        let m = f16_le(b.m);
        for j in 0..QK / 2 {
            y[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            y[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// The fifth bit of element j (j < 16) is bit j of qh, of element j+16 bit j+16.
#[inline]
pub(crate) fn q5_high_bits(qh: u32, j: usize) -> (u8, u8) {
    let h0 = (((qh >> j) << 4) & 0x10) as u8;
    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
    (h0, h1)
}

/// x = d·(q − 16), q 5 bits.
pub fn deq_q5_0(blocks: &[BlockQ5_0], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let (h0, h1) = q5_high_bits(qh, j);
            y[j] = (((b.qs[j] & 0x0F) | h0) as i32 - 16) as f32 * d;
            y[j + QK / 2] = (((b.qs[j] >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

/// x = d·q + m, q 5 bits.
pub fn deq_q5_1(blocks: &[BlockQ5_1], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        let m = f16_le(b.m);
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let (h0, h1) = q5_high_bits(qh, j);
            y[j] = ((b.qs[j] & 0x0F) | h0) as f32 * d + m;
            y[j + QK / 2] = ((b.qs[j] >> 4) | h1) as f32 * d + m;
        }
    }
}

/// x = d·q.
pub fn deq_q8_0(blocks: &[BlockQ8_0], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        for j in 0..QK {
            y[j] = b.qs[j] as i8 as f32 * d;
        }
    }
}

/// Bytes of sparse super-blocks → f32, for each sparse type.
macro_rules! sparse_rows {
    ($($row:ident = $blk:ty;)*) => {$(
        #[doc = concat!("Bytes of ", stringify!($blk), " → f32.")]
        pub fn $row(src: &[u8], dst: &mut [f32]) {
            deq_sparse::<$blk>(as_blocks(src).unwrap_or(&[]), dst)
        }
    )*};
}

sparse_rows! {
    q8_0_48_row = BlockQ8_0S;
    q4_0_48_row = BlockQ4_0S;
    q8_0_24_row = BlockQ8_0P;
    q4_0_24_row = BlockQ4_0P;
}

/// Sparse super-blocks → f32: the kept values d·q at the set bits of each block's mask, in
/// order; 0 elsewhere.
pub fn deq_sparse<B: Sparse>(blocks: &[B], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QS)) {
        y.fill(0.0);
        let masks = b.masks();
        for (s, &mask) in masks.iter().enumerate() {
            let (d, q) = (b.scale(s), b.kept(s));
            // A mask with more than 16 bits set is malformed (the loader refuses it); its
            // extra positions stay 0 rather than reading past the kept values.
            for (j, &v) in (0..QK).filter(|j| mask >> j & 1 == 1).zip(&q) {
                y[QK * s + j] = v as f32 * d;
            }
        }
    }
}

/// Two 128-element halves; in each, four 2-bit planes (shift 0,2,4,6) of 32 bytes, each plane
/// two sub-blocks of 16 with their own 4-bit scale and 4-bit min:
/// x = d·(sc & 15)·q − dmin·(sc >> 4).
pub fn deq_q2_k(blocks: &[BlockQ2K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let min = f16_le(b.dmin);
        let mut out = 0;
        let mut is = 0;
        for half in 0..2 {
            let q = &b.qs[half * 32..half * 32 + 32];
            for shift in (0..8).step_by(2) {
                for part in 0..2 {
                    let sc = b.scales[is];
                    is += 1;
                    let dl = d * (sc & 0x0F) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        y[out] = dl * ((q[part * 16 + l] >> shift) & 3) as f32 - ml;
                        out += 1;
                    }
                }
            }
        }
    }
}

/// Unpacks the 12 scale bytes of Q3_K into 16 six-bit values (low 4 bits from bytes 0..8,
/// high 2 bits from bytes 8..12), then subtracts the bias 32. In 64-bit words, all sixteen
/// at once: scale i (< 8) has the low nibble of byte i, scale 8 + i its high nibble, and
/// scale 4g + j bits 2g..2g+2 of byte 8 + j on top (once per super-block in the dot kernels,
/// where a loop per scale cost more than the block's products).
#[inline]
pub(crate) fn q3k_scales(packed: &[u8; 12]) -> [i8; 16] {
    let (lo, hi) = q3k_scale_words(packed);
    let mut out = [0i8; 16];
    for (o, b) in out
        .iter_mut()
        .zip(lo.to_le_bytes().into_iter().chain(hi.to_le_bytes()))
    {
        *o = (b as i32 - 32) as i8;
    }
    out
}

/// [`q3k_scales`] before the bias: the sixteen 6-bit values as the bytes of two words
/// (scales 0..8, 8..16), for kernels that take them into a vector register as they are.
#[inline]
pub(crate) fn q3k_scale_words(packed: &[u8; 12]) -> (u64, u64) {
    const NIB: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    const TWO: u32 = 0x0303_0303;
    let a = u64::from_le_bytes([
        packed[0], packed[1], packed[2], packed[3], packed[4], packed[5], packed[6], packed[7],
    ]);
    let h = u32::from_le_bytes([packed[8], packed[9], packed[10], packed[11]]);
    // Byte j of (h >> 2g) & 0x03030303 holds the high bits of scale 4g + j.
    let high = |g: u32| ((h >> (2 * g)) & TWO) as u64;
    let lo = (a & NIB) | (high(0) | high(1) << 32) << 4;
    let hi = ((a >> 4) & NIB) | (high(2) | high(3) << 32) << 4;
    (lo, hi)
}

/// x = d·(scale − 32)·(q − (high bit clear ? 4 : 0)), q = 2 low bits.
pub fn deq_q3_k(blocks: &[BlockQ3K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d_all = f16_le(b.d);
        let scales = q3k_scales(&b.scales);
        let mut out = 0;
        let mut is = 0;
        let mut m: u8 = 1;
        for half in 0..2 {
            let q = &b.qs[half * 32..half * 32 + 32];
            for shift in (0..8).step_by(2) {
                for part in 0..2 {
                    let dl = d_all * scales[is] as f32;
                    is += 1;
                    for l in 0..16 {
                        let idx = part * 16 + l;
                        let low = ((q[idx] >> shift) & 3) as i32;
                        let sub = if b.hmask[idx] & m != 0 { 0 } else { 4 };
                        y[out] = dl * (low - sub) as f32;
                        out += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}

/// Scale and min (6 bits each) of sub-block `j` of Q4_K/Q5_K from the packed 12 bytes.
#[inline]
pub fn k4_scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Four 64-element groups; each group's 32 bytes give two sub-blocks (low nibbles, high
/// nibbles): x = d·sc·q − dmin·m.
pub fn deq_q4_k(blocks: &[BlockQ4K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let min = f16_le(b.dmin);
        for g in 0..4 {
            let q = &b.qs[g * 32..g * 32 + 32];
            let (sc1, m1) = k4_scale_min(2 * g, &b.scales);
            let (sc2, m2) = k4_scale_min(2 * g + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let y = &mut y[g * 64..g * 64 + 64];
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// As Q4_K, with the fifth bit of element l of group g at bit 2g (low half) / 2g+1 (high half)
/// of qh[l].
pub fn deq_q5_k(blocks: &[BlockQ5K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let min = f16_le(b.dmin);
        for g in 0..4 {
            let ql = &b.qs[g * 32..g * 32 + 32];
            let (sc1, m1) = k4_scale_min(2 * g, &b.scales);
            let (sc2, m2) = k4_scale_min(2 * g + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let u1 = 1u8 << (2 * g);
            let u2 = 2u8 << (2 * g);
            let y = &mut y[g * 64..g * 64 + 64];
            for l in 0..32 {
                let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
                y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

/// Two 128-element halves; element l (<32) of each quarter takes its low 4 bits from ql and its
/// top 2 bits from qh: x = d·scale·(q − 32).
pub fn deq_q6_k(blocks: &[BlockQ6K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        for half in 0..2 {
            let ql = &b.ql[half * 64..half * 64 + 64];
            let qh = &b.qh[half * 32..half * 32 + 32];
            let sc = &b.scales[half * 8..half * 8 + 8];
            let y = &mut y[half * 128..half * 128 + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

/// x = d·q, d an f32.
pub fn deq_q8_k(blocks: &[BlockQ8K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes(b.d);
        for j in 0..QK_K {
            y[j] = b.qs[j] as i8 as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q3k_scale_unpacking_matches_ggml_bit_twiddling() {
        // ggml's version, with kmask1 = 0x03030303 and kmask2 = 0x0f0f0f0f.
        fn ggml(packed: &[u8; 12]) -> [i8; 16] {
            let mut aux = [0u32; 4];
            for i in 0..3 {
                aux[i] = u32::from_le_bytes(packed[i * 4..i * 4 + 4].try_into().unwrap());
            }
            let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
            let tmp = aux[2];
            aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
            aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
            aux[0] = (aux[0] & k2) | ((tmp & k1) << 4);
            aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
            let mut out = [0i8; 16];
            for i in 0..16 {
                out[i] = (aux[i / 4].to_le_bytes()[i % 4] as i32 - 32) as i8;
            }
            out
        }
        let mut state = 0x1234_5678u32;
        for _ in 0..200 {
            let mut p = [0u8; 12];
            for b in p.iter_mut() {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (state >> 24) as u8;
            }
            assert_eq!(q3k_scales(&p), ggml(&p));
        }
    }
}
