//! Scalar reference dot products: the twins the SIMD kernels are tested against, one
//! [`DotFn`] per weight type (the type table, `crate::types`, points to them).

use crate::act::{ActRef, Q8KRow, Q8Row};
use crate::blocks::*;
use crate::dequant::{k4_scale_min, q3k_scales};
use crate::ops;
use tuili_core::DType;

/// One weight type's reference dot product: Σ w·x of the row `w` and one activation row in
/// the form the type takes (`crate::types` says which); `tmp` holds a dequantized row where
/// one is needed. A mismatched activation form is a caller bug; NaN makes it visible in the
/// output rather than a panic in a worker thread.
pub type DotFn = fn(w: &[u8], a: ActRef<'_>, tmp: &mut [f32]) -> f32;

/// Σ w·x with eight partial sums (the order the SIMD twins add in).
fn float_dot(w: impl Iterator<Item = f32>, x: impl Iterator<Item = f32>) -> f32 {
    let mut acc = [0f32; 8];
    for (i, (a, b)) in w.zip(x).enumerate() {
        acc[i % 8] += a * b;
    }
    acc.iter().sum()
}

/// F32 weights.
pub fn f32_dot(w: &[u8], a: ActRef<'_>, _tmp: &mut [f32]) -> f32 {
    match a {
        ActRef::F32(x) => {
            let n = x.len();
            let w = w[..n * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            float_dot(w, x.iter().copied())
        }
        _ => f32::NAN,
    }
}

/// F16 weights, with f16 activations (decode) or f32 ones (prompt batches).
pub fn f16_dot(w: &[u8], a: ActRef<'_>, _tmp: &mut [f32]) -> f32 {
    let w = w.chunks_exact(2).map(|c| f16_le([c[0], c[1]]));
    match a {
        ActRef::F32(x) => float_dot(w, x.iter().copied()),
        ActRef::F16(x) => float_dot(w, x.iter().map(|v| v.to_f32())),
        _ => f32::NAN,
    }
}

/// BF16 weights.
pub fn bf16_dot(w: &[u8], a: ActRef<'_>, _tmp: &mut [f32]) -> f32 {
    match a {
        ActRef::F32(x) => {
            let w = w.chunks_exact(2).map(|c| bf16_le([c[0], c[1]]));
            float_dot(w, x.iter().copied())
        }
        _ => f32::NAN,
    }
}

/// A row dequantized into `tmp` by `deq`, then an f32 dot (types without an integer
/// kernel, and integer types handed f32 activations).
fn dequantized_dot(dtype: DType, deq: RowFn, w: &[u8], x: &[f32], tmp: &mut [f32]) -> f32 {
    let t = &mut tmp[..x.len()];
    if crate::check_row(dtype, t.len(), w.len()).is_err() {
        return f32::NAN;
    }
    deq(w, t);
    ops::dot(t, x)
}

/// A dequantizer of whole rows (`crate::dequant`).
type RowFn = fn(&[u8], &mut [f32]);

/// Q8_K weights: dequantized, then an f32 dot.
pub fn q8_k_dot(w: &[u8], a: ActRef<'_>, tmp: &mut [f32]) -> f32 {
    match a {
        ActRef::F32(x) => dequantized_dot(DType::Q8_K, crate::dequant::q8_k_row, w, x, tmp),
        _ => f32::NAN,
    }
}

/// The reference dot of a block type: its integer kernel `$f` on its activation form
/// `$act`, or the dequantized row (`$deq`) with f32 activations.
macro_rules! block_dot {
    ($name:ident, $dtype:ident, $act:ident, $f:ident, $deq:ident) => {
        #[doc = concat!("`", stringify!($f), "` weights.")]
        pub fn $name(w: &[u8], a: ActRef<'_>, tmp: &mut [f32]) -> f32 {
            match a {
                ActRef::$act(a) => $f(blocks(w), a),
                ActRef::F32(x) => dequantized_dot(DType::$dtype, crate::dequant::$deq, w, x, tmp),
                _ => f32::NAN,
            }
        }
    };
}

block_dot!(q8_0_dot, Q8_0, Q8, q8_0, q8_0_row);
block_dot!(q8_0_48_dot, Q8_0_48, Q8, sparse_q8_0s, q8_0_48_row);
block_dot!(q4_0_48_dot, Q4_0_48, Q8, sparse_q4_0s, q4_0_48_row);
block_dot!(q8_0_24_dot, Q8_0_24, Q8, sparse_q8_0p, q8_0_24_row);
block_dot!(q4_0_24_dot, Q4_0_24, Q8, sparse_q4_0p, q4_0_24_row);
block_dot!(q4_0_dot, Q4_0, Q8, q4_0, q4_0_row);
block_dot!(q4_1_dot, Q4_1, Q8, q4_1, q4_1_row);
block_dot!(q5_0_dot, Q5_0, Q8, q5_0, q5_0_row);
block_dot!(q5_1_dot, Q5_1, Q8, q5_1, q5_1_row);
block_dot!(q2_k_dot, Q2_K, Q8K, q2_k, q2_k_row);
block_dot!(q3_k_dot, Q3_K, Q8K, q3_k, q3_k_row);
block_dot!(q4_k_dot, Q4_K, Q8K, q4_k, q4_k_row);
block_dot!(q5_k_dot, Q5_K, Q8K, q5_k, q5_k_row);
block_dot!(q6_k_dot, Q6_K, Q8K, q6_k, q6_k_row);

/// Unstructured sparse rows (`Q8_0_U{R}`, `crate::pool`): only the kept weights multiplied.
pub fn q8_0_pooled_dot<const R: usize>(w: &[u8], a: ActRef<'_>, tmp: &mut [f32]) -> f32 {
    match a {
        ActRef::Q8(a) => crate::pool::dot(w, w.len() / (crate::pool::HEAD + R) * QS, a),
        ActRef::F32(x) => {
            let t = &mut tmp[..x.len()];
            crate::pool::dequantize_row(w, t);
            ops::dot(t, x)
        }
        _ => f32::NAN,
    }
}

/// Views a weight row as blocks; rows are whole blocks by construction (the GGUF parser
/// checks that row lengths are block multiples).
fn blocks<B: Block>(w: &[u8]) -> &[B] {
    as_blocks(w).unwrap_or(&[])
}

fn isum(qw: impl Iterator<Item = i32>, qa: &[i8]) -> i32 {
    qw.zip(qa).map(|(w, &a)| w * a as i32).sum()
}

/// Σ_b d_w·d_a·Σ q_w·q_a.
pub fn q8_0(w: &[BlockQ8_0], a: &Q8Row) -> f32 {
    let mut s = 0f32;
    for (b, wb) in w.iter().enumerate() {
        let qa = &a.qs[b * QK..(b + 1) * QK];
        s += f16_le(wb.d) * a.d[b] * isum(wb.qs.iter().map(|&q| q as i8 as i32), qa) as f32;
    }
    s
}

/// Σ over blocks of d_w·d_a·Σ_k q_k·a_{p_k}, p_k the k-th set bit of the block's mask: only
/// the kept weights (sparse super-blocks, [`Sparse`]).
pub fn sparse<B: Sparse>(w: &[B], a: &Q8Row) -> f32 {
    let mut s = 0f32;
    for (sb, wb) in w.iter().enumerate() {
        for (j, &mask) in wb.masks().iter().enumerate() {
            let b = sb * SPARSE_SUB + j;
            let qa = &a.qs[b * QK..(b + 1) * QK];
            let q = wb.kept(j);
            let acc: i32 = (0..QK)
                .filter(|p| mask >> p & 1 == 1)
                .zip(&q)
                .map(|(p, &v)| v as i32 * qa[p] as i32)
                .sum();
            s += wb.scale(j) * a.d[b] * acc as f32;
        }
    }
    s
}

fn sparse_q8_0s(w: &[BlockQ8_0S], a: &Q8Row) -> f32 {
    sparse(w, a)
}
fn sparse_q4_0s(w: &[BlockQ4_0S], a: &Q8Row) -> f32 {
    sparse(w, a)
}
fn sparse_q8_0p(w: &[BlockQ8_0P], a: &Q8Row) -> f32 {
    sparse(w, a)
}
fn sparse_q4_0p(w: &[BlockQ4_0P], a: &Q8Row) -> f32 {
    sparse(w, a)
}

fn nibbles(qs: &[u8; 16]) -> impl Iterator<Item = i32> + '_ {
    qs.iter()
        .map(|&q| (q & 0x0F) as i32)
        .chain(qs.iter().map(|&q| (q >> 4) as i32))
}

/// Σ_b d_w·d_a·Σ (q_w − 8)·q_a.
pub fn q4_0(w: &[BlockQ4_0], a: &Q8Row) -> f32 {
    let mut s = 0f32;
    for (b, wb) in w.iter().enumerate() {
        let qa = &a.qs[b * QK..(b + 1) * QK];
        s += f16_le(wb.d) * a.d[b] * isum(nibbles(&wb.qs).map(|q| q - 8), qa) as f32;
    }
    s
}

/// Σ_b (d_w·d_a·Σ q_w·q_a + m_w·d_a·Σ q_a).
pub fn q4_1(w: &[BlockQ4_1], a: &Q8Row) -> f32 {
    let mut s = 0f32;
    for (b, wb) in w.iter().enumerate() {
        let qa = &a.qs[b * QK..(b + 1) * QK];
        s += f16_le(wb.d) * a.d[b] * isum(nibbles(&wb.qs), qa) as f32
            + f16_le(wb.m) * a.d[b] * a.isum[b] as f32;
    }
    s
}

fn q5_values(qs: &[u8; 16], qh: [u8; 4]) -> [i32; 32] {
    let h = u32::from_le_bytes(qh);
    let mut v = [0i32; 32];
    for j in 0..16 {
        v[j] = ((qs[j] & 0x0F) as u32 | (((h >> j) & 1) << 4)) as i32;
        v[j + 16] = ((qs[j] >> 4) as u32 | (((h >> (j + 16)) & 1) << 4)) as i32;
    }
    v
}

pub fn q5_0(w: &[BlockQ5_0], a: &Q8Row) -> f32 {
    let mut s = 0f32;
    for (b, wb) in w.iter().enumerate() {
        let qa = &a.qs[b * QK..(b + 1) * QK];
        let v = q5_values(&wb.qs, wb.qh);
        s += f16_le(wb.d) * a.d[b] * isum(v.iter().map(|&q| q - 16), qa) as f32;
    }
    s
}

pub fn q5_1(w: &[BlockQ5_1], a: &Q8Row) -> f32 {
    let mut s = 0f32;
    for (b, wb) in w.iter().enumerate() {
        let qa = &a.qs[b * QK..(b + 1) * QK];
        let v = q5_values(&wb.qs, wb.qh);
        s += f16_le(wb.d) * a.d[b] * isum(v.iter().copied(), qa) as f32
            + f16_le(wb.m) * a.d[b] * a.isum[b] as f32;
    }
    s
}

/// Per super-block: d_a·(d·Σ_j sc_j·Σ q_w·q_a − dmin·Σ_j m_j·Σ q_a), j over 8 sub-blocks of 32.
pub fn q4_k(w: &[BlockQ4K], a: &Q8KRow) -> f32 {
    k4_like(w.iter().map(|b| (b.d, b.dmin, &b.scales, &b.qs, None)), a)
}

/// The blocks of a Q4_K or Q5_K row as (d, dmin, packed scales, nibbles, Q5_K's fifth bits).
type K4Fields<'a> = (
    [u8; 2],
    [u8; 2],
    &'a [u8; 12],
    &'a [u8; QK_K / 2],
    Option<&'a [u8; QK_K / 8]>,
);

/// The shared body of [`q4_k`] and [`q5_k`].
fn k4_like<'a>(blocks: impl Iterator<Item = K4Fields<'a>>, a: &Q8KRow) -> f32 {
    let mut s = 0f32;
    for (b, (d, dmin, scales, qs, qh)) in blocks.enumerate() {
        let qa = &a.qs[b * QK_K..(b + 1) * QK_K];
        let (d, dmin) = (f16_le(d), f16_le(dmin));
        let mut sum_q = 0i32;
        let mut sum_m = 0i32;
        for g in 0..4 {
            let q = &qs[g * 32..g * 32 + 32];
            for (half, j) in [(0, 2 * g), (1, 2 * g + 1)] {
                let (sc, m) = k4_scale_min(j, scales);
                let qa_j = &qa[j * 32..j * 32 + 32];
                let dotj = isum(
                    q.iter().enumerate().map(|(l, &x)| {
                        let low = if half == 0 { x & 0x0F } else { x >> 4 } as i32;
                        let high = qh.map_or(0, |h| ((h[l] >> j) & 1) as i32);
                        low | high << 4
                    }),
                    qa_j,
                );
                sum_q += sc as i32 * dotj;
                sum_m += m as i32 * (a.bsums[b * 16 + 2 * j] + a.bsums[b * 16 + 2 * j + 1]);
            }
        }
        s += a.d[b] * (d * sum_q as f32 - dmin * sum_m as f32);
    }
    s
}

/// The 256 six-bit values of a Q6_K block, minus 32, in element order.
pub fn q6_k_values(b: &BlockQ6K) -> [i8; QK_K] {
    let mut v = [0i8; QK_K];
    for half in 0..2 {
        let ql = &b.ql[half * 64..half * 64 + 64];
        let qh = &b.qh[half * 32..half * 32 + 32];
        let y = &mut v[half * 128..half * 128 + 128];
        for l in 0..32 {
            y[l] = (((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32) as i8;
            y[l + 32] = (((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32) as i8;
            y[l + 64] = (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32) as i8;
            y[l + 96] = (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32) as i8;
        }
    }
    v
}

/// As [`q4_k`], with the fifth bit of element l of group g at bit 2g (low sub-block) or
/// 2g+1 (high) of qh[l].
pub fn q5_k(w: &[BlockQ5K], a: &Q8KRow) -> f32 {
    k4_like(
        w.iter()
            .map(|b| (b.d, b.dmin, &b.scales, &b.qs, Some(&b.qh))),
        a,
    )
}

/// Per super-block: d_a·d·Σ_g sc_g·Σ q_w·q_a over 16 groups of 16.
pub fn q6_k(w: &[BlockQ6K], a: &Q8KRow) -> f32 {
    let mut s = 0f32;
    for (b, wb) in w.iter().enumerate() {
        let qa = &a.qs[b * QK_K..(b + 1) * QK_K];
        let v = q6_k_values(wb);
        let mut sum = 0i32;
        for g in 0..16 {
            let d: i32 = v[g * 16..g * 16 + 16]
                .iter()
                .zip(&qa[g * 16..g * 16 + 16])
                .map(|(&x, &y)| x as i32 * y as i32)
                .sum();
            sum += wb.scales[g] as i8 as i32 * d;
        }
        s += a.d[b] * f16_le(wb.d) * sum as f32;
    }
    s
}

/// The 2-bit value of element 16g + l of a Q2_K or Q3_K block (group g = 8·half + 2·j + part:
/// bits 2j of byte 32·half + 16·part + l of `qs`).
fn low2(qs: &[u8; QK_K / 4], g: usize, l: usize) -> i32 {
    let (half, j, part) = (g / 8, (g % 8) / 2, g % 2);
    ((qs[32 * half + 16 * part + l] >> (2 * j)) & 3) as i32
}

/// Per super-block: d_a·(d·Σ_g sc_g·Σ q·q_a − dmin·Σ_g m_g·bsum_g) over 16 groups of 16
/// (x = d·sc_g·q − dmin·m_g, q 2 bits, sc_g and m_g the low and high nibbles of scales[g]).
pub fn q2_k(w: &[BlockQ2K], a: &Q8KRow) -> f32 {
    let mut s = 0f32;
    for (b, wb) in w.iter().enumerate() {
        let qa = &a.qs[b * QK_K..(b + 1) * QK_K];
        let (mut sum_q, mut sum_m) = (0i32, 0i32);
        for g in 0..16 {
            let d: i32 = (0..16)
                .map(|l| low2(&wb.qs, g, l) * qa[16 * g + l] as i32)
                .sum();
            sum_q += (wb.scales[g] & 0x0F) as i32 * d;
            sum_m += (wb.scales[g] >> 4) as i32 * a.bsums[16 * b + g];
        }
        s += a.d[b] * (f16_le(wb.d) * sum_q as f32 - f16_le(wb.dmin) * sum_m as f32);
    }
    s
}

/// Per super-block: d_a·d·Σ_g sc_g·Σ v·q_a over 16 groups of 16, v = q + 4·h − 4 (q 2 bits,
/// h the group's bit k = 4·half + j of hmask[16·part + l]; sc_g signed, minus 32).
pub fn q3_k(w: &[BlockQ3K], a: &Q8KRow) -> f32 {
    let mut s = 0f32;
    for (b, wb) in w.iter().enumerate() {
        let qa = &a.qs[b * QK_K..(b + 1) * QK_K];
        let sc = q3k_scales(&wb.scales);
        let mut sum = 0i32;
        for g in 0..16 {
            let (k, part) = (g / 2, g % 2);
            let d: i32 = (0..16)
                .map(|l| {
                    let h = ((wb.hmask[16 * part + l] >> k) & 1) as i32;
                    (low2(&wb.qs, g, l) + 4 * h - 4) * qa[16 * g + l] as i32
                })
                .sum();
            sum += sc[g] as i32 * d;
        }
        s += a.d[b] * f16_le(wb.d) * sum as f32;
    }
    s
}
