//! Float operations of a decoder layer (scalar reference versions; softmax and SiLU also in
//! AVX2, bit-identical to their twins).

use crate::cpu::Isa;

/// Σ a·b.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    // Eight independent accumulators: lets the compiler vectorize without reassociating.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for k in 0..8 {
            acc[k] += a[c * 8 + k] * b[c * 8 + k];
        }
    }
    let mut s = 0f32;
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    acc.iter().sum::<f32>() + s
}

/// y += a·x.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// RMSNorm: out = x / sqrt(mean(x²) + eps) ⊙ w.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for ((o, xi), wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * scale * wi;
    }
}

/// RMSNorm in place: x ← x / sqrt(mean(x²) + eps) ⊙ w.
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for (xi, wi) in x.iter_mut().zip(w) {
        *xi *= scale * wi;
    }
}

/// LayerNorm: out = (x − mean) / sqrt(var + eps) ⊙ w + b (GPT-2).
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, xi), wi), bi) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (xi - mean) * inv * wi + bi;
    }
}

/// GELU with the tanh approximation, in place (GPT-2's `gelu_new`).
pub fn gelu_tanh(x: &mut [f32]) {
    const C: f32 = 0.797_884_6; // √(2/π)
    for v in x.iter_mut() {
        let t = *v;
        *v = 0.5 * t * (1.0 + (C * (t + 0.044_715 * t * t * t)).tanh());
    }
}

/// In-place softmax: x ← exp(x − max) / Σ exp(x − max). Entries of −∞ become 0.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SiLU(g) ⊙ u, written into g: g ← g·σ(g)·u.
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (gi, ui) in g.iter_mut().zip(u) {
        *gi = *gi / (1.0 + (-*gi).exp()) * ui;
    }
}

/// GELU(g) ⊙ u with the tanh approximation (Gemma's GeGLU, PyTorch's `gelu(approximate="tanh")`):
/// g ← ½·g·(1 + tanh(√(2/π)·(g + 0.044715·g³)))·u.
pub fn gelu_tanh_mul(g: &mut [f32], u: &[f32]) {
    const C: f32 = 0.797_884_6; // √(2/π)
    for (gi, ui) in g.iter_mut().zip(u) {
        let x = *gi;
        *gi = 0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh()) * ui;
    }
}

/// c·tanh(x/c) for every element (Gemma 2's soft-capping of scores and logits).
pub fn softcap(x: &mut [f32], c: f32) {
    for v in x.iter_mut() {
        *v = c * (*v / c).tanh();
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// GGML "normal": pairs (x[2i], x[2i+1]) — GGUF Llama files (the converter permutes Q/K).
    Interleaved,
    /// GGML "NeoX" / HF rotate-half: pairs (x[i], x[i + n_rot/2]).
    NeoX,
}

/// Precomputes the inverse frequencies θ_i = base^(−2i/n_rot), i < n_rot/2, into `out`.
pub fn rope_inv_freq(n_rot: usize, freq_base: f32, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate().take(n_rot / 2) {
        *o = (freq_base as f64).powf(-(2.0 * i as f64) / n_rot as f64) as f32;
    }
}

/// Rotates the first `n_rot` dimensions of one head in place at position `pos`:
/// (a, b) ← (a·cos φ − b·sin φ, a·sin φ + b·cos φ), φ = pos·freq_scale·θ_i.
/// `inv_freq` has n_rot/2 entries (see [`rope_inv_freq`]); dimensions past n_rot are untouched.
pub fn rope(
    head: &mut [f32],
    n_rot: usize,
    pos: usize,
    freq_scale: f32,
    inv_freq: &[f32],
    layout: RopeLayout,
) {
    let p = pos as f32 * freq_scale;
    for (i, &f) in inv_freq.iter().enumerate().take(n_rot / 2) {
        let (sin, cos) = (p * f).sin_cos();
        rotate_pair(head, i, n_rot, layout, cos, sin);
    }
}

/// Rotates pair i of a head (interleaved: dimensions 2i, 2i + 1; NeoX: i, i + n_rot/2).
#[inline(always)]
fn rotate_pair(head: &mut [f32], i: usize, n_rot: usize, layout: RopeLayout, cos: f32, sin: f32) {
    let (ia, ib) = match layout {
        RopeLayout::Interleaved => (2 * i, 2 * i + 1),
        RopeLayout::NeoX => (i, i + n_rot / 2),
    };
    let a = head[ia];
    let b = head[ib];
    head[ia] = a * cos - b * sin;
    head[ib] = a * sin + b * cos;
}

/// The angles of [`rope`] at `pos` as `cs[2i]` = cos φ_i, `cs[2i + 1]` = sin φ_i (n_rot
/// values): computed once per token for all its heads by [`rope_with`].
pub fn rope_angles(n_rot: usize, pos: usize, freq_scale: f32, inv_freq: &[f32], cs: &mut [f32]) {
    let p = pos as f32 * freq_scale;
    for (i, &f) in inv_freq.iter().enumerate().take(n_rot / 2) {
        let (sin, cos) = (p * f).sin_cos();
        cs[2 * i] = cos;
        cs[2 * i + 1] = sin;
    }
}

/// [`rope`] with the angles from [`rope_angles`] (the same results, to the bit).
pub fn rope_with(head: &mut [f32], n_rot: usize, cs: &[f32], layout: RopeLayout) {
    for i in 0..n_rot / 2 {
        rotate_pair(head, i, n_rot, layout, cs[2 * i], cs[2 * i + 1]);
    }
}

// e^x in vectors: Cephes' expf. x = n·ln 2 + r with n = ⌊x·log₂e + ½⌋ and |r| ≤ ½ ln 2 (ln 2 in
// two parts so that r is exact), e^r ≈ 1 + r + r²·P(r) with a degree-5 P, then ×2ⁿ through the
// exponent bits. Relative error < 2e-7 (tested against f64); libm's expf, called per element,
// was 4–5 % of prompt processing (softmax of the attention scores, SiLU of the FFN gate).
const EXP_HI: f32 = 88.376_26; // ⌊x·log₂e + ½⌋ ≤ 127 below this
const EXP_LO: f32 = -87.336_55; // e^x < the smallest normal f32 below this: 0
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// e^x as the vector code computes it, to the bit (the scalar twin of the AVX2 version): NaN
/// stays NaN, below −87.34 gives 0 (−∞ too: masked softmax scores), above 88.38 gives +∞
/// (e^x is finite up to 88.72: the few values between become +∞).
#[inline]
pub fn exp_poly(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_LO {
        return 0.0;
    }
    if x > EXP_HI {
        return f32::INFINITY;
    }
    let n = (x * LOG2E + 0.5).floor();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let mut p = EXP_P[0];
    for c in &EXP_P[1..] {
        p = p.mul_add(r, *c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Softmax in place with [`exp_poly`]; `isa` ≥ AVX2 runs eight at a time and gives the same
/// bits as the scalar path (the sum is taken in eight lanes, reduced in the same order).
pub fn softmax_fast(isa: Isa, x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: Avx2 or better is reported only when AVX2, FMA and F16C are present.
        unsafe { x86::softmax(x, max) };
        return;
    }
    let _ = isa;
    let n8 = x.len() / 8 * 8;
    let mut lanes = [0f32; 8];
    for (i, v) in x[..n8].iter_mut().enumerate() {
        *v = exp_poly(*v - max);
        lanes[i % 8] += *v;
    }
    let mut sum = hsum8(lanes);
    for v in x[n8..].iter_mut() {
        *v = exp_poly(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// The horizontal sum of eight lanes in the order `x86::hsum` takes: halves, then pairs.
#[inline]
fn hsum8(l: [f32; 8]) -> f32 {
    let a: [f32; 4] = std::array::from_fn(|i| l[i] + l[i + 4]);
    let b = [a[0] + a[2], a[1] + a[3]];
    b[0] + b[1]
}

/// SiLU(g) ⊙ u into g with [`exp_poly`]; `isa` ≥ AVX2 runs eight at a time, same bits.
pub fn silu_mul_fast(isa: Isa, g: &mut [f32], u: &[f32]) {
    let n = g.len().min(u.len());
    // Mutated only where the x86_64 block below is compiled.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as in `softmax_fast`; both slices hold n elements.
        done = unsafe { x86::silu_mul(&mut g[..n], &u[..n]) };
    }
    let _ = isa;
    for (gi, ui) in g[done..n].iter_mut().zip(&u[done..n]) {
        *gi = *gi / (1.0 + exp_poly(-*gi)) * ui;
    }
}

/// Rows of a token-lane tile ([`crate::gemm`]) to the token rows of the output: `dst[tok ·
/// stride + r] = t[r · width + tok]` for r < 16, tok < n. With AVX2 in 8 × 8 blocks
/// transposed in registers, one 32-byte store per eight values (a store per value kept the
/// store buffer full of misses: the output of a prompt's matrix product is megabytes, one
/// cache line per token and tile); else value by value ([`transpose16_scalar`], its twin).
///
/// # Safety
/// `dst` must be valid for writes at `tok · stride .. tok · stride + 16` for every tok < n,
/// with no other thread touching them; `t` holds 16 rows of `width` ≥ n values.
pub unsafe fn transpose16(
    isa: Isa,
    t: &[f32],
    width: usize,
    n: usize,
    dst: *mut f32,
    stride: usize,
) {
    assert!(n <= width && t.len() >= 16 * width);
    // Mutated only where the x86_64 block below is compiled.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: AVX2 was detected at run time; bounds are the caller's contract (asserted
        // for `t`).
        done = unsafe { x86::transpose16(t, width, n, dst, stride) };
    }
    let _ = isa;
    // SAFETY: the caller's contract.
    unsafe { transpose16_from(t, width, done, n, dst, stride) };
}

/// The scalar twin of [`transpose16`].
///
/// # Safety
/// As [`transpose16`].
pub unsafe fn transpose16_scalar(t: &[f32], width: usize, n: usize, dst: *mut f32, stride: usize) {
    assert!(n <= width && t.len() >= 16 * width);
    // SAFETY: the caller's contract.
    unsafe { transpose16_from(t, width, 0, n, dst, stride) };
}

/// Tokens `from..n` of [`transpose16`], value by value.
///
/// # Safety
/// As [`transpose16`].
unsafe fn transpose16_from(
    t: &[f32],
    width: usize,
    from: usize,
    n: usize,
    dst: *mut f32,
    stride: usize,
) {
    for tok in from..n {
        for r in 0..16 {
            // SAFETY: the caller's contract.
            unsafe { dst.add(tok * stride + r).write(t[r * width + tok]) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use crate::dot::x86::hsum;
    use std::arch::x86_64::*;

    /// [`transpose16`] for whole groups of eight tokens; returns how many tokens it did.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose16(
        t: &[f32],
        width: usize,
        n: usize,
        dst: *mut f32,
        stride: usize,
    ) -> usize {
        let mut tok = 0;
        while tok + 8 <= n {
            for half in 0..2 {
                // SAFETY: rows 8·half + i < 16 of `t` hold `width` ≥ tok + 8 values; the
                // stores are the caller's contract.
                unsafe {
                    let r: [__m256; 8] = std::array::from_fn(|i| {
                        _mm256_loadu_ps(t.as_ptr().add((8 * half + i) * width + tok))
                    });
                    // [r_i0 r_j0 r_i1 r_j1 | r_i4 r_j4 r_i5 r_j5] and the odd pairs' 2, 3, 6, 7.
                    let lo: [__m256; 4] =
                        std::array::from_fn(|i| _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]));
                    let hi: [__m256; 4] =
                        std::array::from_fn(|i| _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]));
                    // Four rows of one token per 128-bit lane: s[c] holds tokens c and c + 4.
                    let s = [
                        _mm256_shuffle_ps::<0x44>(lo[0], lo[1]),
                        _mm256_shuffle_ps::<0xEE>(lo[0], lo[1]),
                        _mm256_shuffle_ps::<0x44>(hi[0], hi[1]),
                        _mm256_shuffle_ps::<0xEE>(hi[0], hi[1]),
                    ];
                    let s2 = [
                        _mm256_shuffle_ps::<0x44>(lo[2], lo[3]),
                        _mm256_shuffle_ps::<0xEE>(lo[2], lo[3]),
                        _mm256_shuffle_ps::<0x44>(hi[2], hi[3]),
                        _mm256_shuffle_ps::<0xEE>(hi[2], hi[3]),
                    ];
                    for c in 0..4 {
                        let first = _mm256_permute2f128_ps::<0x20>(s[c], s2[c]);
                        let second = _mm256_permute2f128_ps::<0x31>(s[c], s2[c]);
                        _mm256_storeu_ps(dst.add((tok + c) * stride + 8 * half), first);
                        _mm256_storeu_ps(dst.add((tok + c + 4) * stride + 8 * half), second);
                    }
                }
            }
            tok += 8;
        }
        tok
    }

    /// [`exp_poly`] on eight lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn exp8(x: __m256) -> __m256 {
        // min/max return the second operand when either is NaN: NaN passes through.
        let xc = _mm256_min_ps(_mm256_set1_ps(EXP_HI), x);
        let n = _mm256_floor_ps(_mm256_add_ps(
            _mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        // For x < EXP_LO, n may leave the exponent range: those lanes are zeroed below.
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvttps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        let v = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_LO));
        let huge = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(EXP_HI));
        let v = _mm256_blendv_ps(v, _mm256_set1_ps(f32::INFINITY), huge);
        _mm256_andnot_ps(tiny, v)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax(x: &mut [f32], max: f32) {
        let n8 = x.len() / 8 * 8;
        let p = x.as_mut_ptr();
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 ≤ len.
            unsafe {
                let v = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
                _mm256_storeu_ps(p.add(i), v);
                acc = _mm256_add_ps(acc, v);
            }
            i += 8;
        }
        let mut sum = hsum(acc);
        for v in x[n8..].iter_mut() {
            *v = exp_poly(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in x.iter_mut() {
            *v *= inv;
        }
    }

    /// Whole groups of eight; returns how many it wrote.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul(g: &mut [f32], u: &[f32]) -> usize {
        let n8 = g.len().min(u.len()) / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        let zero = _mm256_setzero_ps();
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 ≤ len of both.
            unsafe {
                let gv = _mm256_loadu_ps(g.as_ptr().add(i));
                let e = exp8(_mm256_sub_ps(zero, gv));
                let r = _mm256_div_ps(gv, _mm256_add_ps(one, e));
                let r = _mm256_mul_ps(r, _mm256_loadu_ps(u.as_ptr().add(i)));
                _mm256_storeu_ps(g.as_mut_ptr().add(i), r);
            }
            i += 8;
        }
        n8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_poly_is_accurate_and_the_vector_version_matches_it() {
        // Against f64 over the whole range, on a fine grid.
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.3 {
            let want = (x as f64).exp();
            let got = exp_poly(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2e-7, "relative error {worst}");
        assert_eq!(exp_poly(0.0), 1.0);
        assert_eq!(exp_poly(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_poly(-100.0), 0.0);
        assert_eq!(exp_poly(100.0), f32::INFINITY);
        assert!(exp_poly(f32::NAN).is_nan());
        // softmax and SiLU: every ISA gives the scalar path's bits, tails included.
        for len in [1usize, 7, 8, 13, 64, 301] {
            let base: Vec<f32> = (0..len)
                .map(|i| {
                    ((i as f32 * 1.37).sin() * 30.0) - if i % 11 == 3 { f32::INFINITY } else { 0.0 }
                })
                .collect();
            let u: Vec<f32> = (0..len).map(|i| (i as f32 * 0.71).cos()).collect();
            let mut want = base.clone();
            softmax_fast(Isa::Scalar, &mut want);
            assert!((want.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            let mut want_silu: Vec<f32> = base.iter().map(|v| v.max(-80.0)).collect();
            silu_mul_fast(Isa::Scalar, &mut want_silu, &u);
            for isa in Isa::available() {
                let mut got = base.clone();
                softmax_fast(isa, &mut got);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "softmax {isa:?} len {len}"
                );
                let mut got: Vec<f32> = base.iter().map(|v| v.max(-80.0)).collect();
                silu_mul_fast(isa, &mut got, &u);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want_silu.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "silu {isa:?} len {len}"
                );
            }
            // And close to the libm versions.
            let mut libm = base.clone();
            softmax(&mut libm);
            for (a, b) in libm.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-30), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_handles_neg_inf() {
        let mut x = [1.0, 2.0, f32::NEG_INFINITY, 3.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[2], 0.0);
        assert!(x[3] > x[1] && x[1] > x[0]);
    }

    #[test]
    fn rope_layouts_rotate_the_right_pairs() {
        let mut inv = [0f32; 2];
        rope_inv_freq(4, 10000.0, &mut inv);
        assert_eq!(inv[0], 1.0);
        assert!((inv[1] - 0.01).abs() < 1e-7);
        // Interleaved: pair (0,1) by angle pos·1, pair (2,3) by pos·0.01.
        let mut h = [1.0, 0.0, 1.0, 0.0, 5.0];
        rope(&mut h, 4, 2, 1.0, &inv, RopeLayout::Interleaved);
        assert!((h[0] - 2f32.cos()).abs() < 1e-6 && (h[1] - 2f32.sin()).abs() < 1e-6);
        assert!((h[2] - 0.02f32.cos()).abs() < 1e-6 && (h[3] - 0.02f32.sin()).abs() < 1e-6);
        assert_eq!(h[4], 5.0);
        // NeoX: pair (0,2) by pos·1, (1,3) by pos·0.01.
        let mut h = [1.0, 1.0, 0.0, 0.0];
        rope(&mut h, 4, 2, 0.5, &inv, RopeLayout::NeoX);
        assert!((h[0] - 1f32.cos()).abs() < 1e-6 && (h[2] - 1f32.sin()).abs() < 1e-6);
        assert!((h[1] - 0.01f32.cos()).abs() < 1e-6 && (h[3] - 0.01f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn transpose16_matches_scalar_twin() {
        let width = 40;
        let t: Vec<f32> = (0..16 * width).map(|i| i as f32 * 0.5 - 7.0).collect();
        for n in [0, 5, 8, 21, 40] {
            let stride = 19;
            let mut want = vec![-1f32; n.max(1) * stride + 16];
            // SAFETY: want holds 16 values at every tok · stride, tok < n.
            unsafe { transpose16_scalar(&t, width, n, want.as_mut_ptr(), stride) };
            for tok in 0..n {
                for r in 0..16 {
                    assert_eq!(want[tok * stride + r], t[r * width + tok]);
                }
            }
            for isa in Isa::available() {
                let mut got = vec![-1f32; n.max(1) * stride + 16];
                // SAFETY: as above.
                unsafe { transpose16(isa, &t, width, n, got.as_mut_ptr(), stride) };
                assert_eq!(got, want, "{isa:?} n {n}");
            }
        }
    }

    #[test]
    fn rope_with_angles_equals_rope() {
        let n_rot = 64;
        let mut inv = vec![0f32; n_rot / 2];
        rope_inv_freq(n_rot, 10000.0, &mut inv);
        let head: Vec<f32> = (0..80).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut cs = vec![0f32; n_rot];
        for layout in [RopeLayout::Interleaved, RopeLayout::NeoX] {
            for pos in [0, 1, 17, 4095] {
                let (mut a, mut b) = (head.clone(), head.clone());
                rope(&mut a, n_rot, pos, 0.5, &inv, layout);
                rope_angles(n_rot, pos, 0.5, &inv, &mut cs);
                rope_with(&mut b, n_rot, &cs, layout);
                assert_eq!(a, b, "{layout:?} pos {pos}");
            }
        }
    }

    #[test]
    fn rms_norm_and_silu() {
        let x = [3.0, 4.0];
        let mut out = [0.0; 2];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut out);
        let r = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
        let mut g = [0.0, 1.0];
        silu_mul(&mut g, &[2.0, 2.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 2.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        assert!((dot(&[1.0; 19], &[2.0; 19]) - 38.0).abs() < 1e-6);
    }
}
