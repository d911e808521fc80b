//! Activations prepared for dot products with quantized weights (ggml's "vec_dot_type"):
//! each row of activations is quantized once per matrix product and then dotted with every
//! weight row. Internal formats (not GGUF): scales are kept in f32 for accuracy.

use crate::blocks::{QK, QK_K};
use crate::cpu::Isa;
use half::f16;

/// The activation form a weight type is dotted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActKind {
    /// f32 activations (F32/BF16 weights, and types without an integer kernel).
    F32,
    /// f16 activations (F16 weights; ggml's choice too). Half the bytes of f32: in decode a
    /// 5632-wide activation (11 KB) stays in L1 beside the streaming weight row, where the f32
    /// one (22 KB) did not — one row at a time then reads 25–27 GB/s on one core against
    /// 21 for four rows sharing f32 loads (measured with rows streamed from a mapped file).
    F16,
    /// int8 blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 weights).
    Q8,
    /// int8 super-blocks of 256 (Q4_K, Q5_K, Q6_K weights).
    Q8K,
}

/// One prepared activation row.
#[derive(Debug, Clone, Copy)]
pub enum ActRef<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Q8(&'a Q8Row),
    Q8K(&'a Q8KRow),
}

/// An int8 activation row ([`Q8Row`], [`Q8KRow`]) as a matrix product prepares it: quantized
/// from f32, then (for one token on VBMI machines) regrouped for the one-row kernels.
pub trait QuantRow: Default + Send {
    /// Quantizes `x` into this row (the kernels of `isa`; bit-identical to the scalar twin).
    fn quantize(&mut self, isa: Isa, x: &[f32]);
    /// Reorders the quants for the one-row VBMI kernels.
    fn regroup(&mut self);
}

impl QuantRow for Q8Row {
    fn quantize(&mut self, isa: Isa, x: &[f32]) {
        self.quantize_isa(isa, x)
    }
    fn regroup(&mut self) {
        Q8Row::regroup(self)
    }
}

impl QuantRow for Q8KRow {
    fn quantize(&mut self, isa: Isa, x: &[f32]) {
        self.quantize_isa(isa, x)
    }
    fn regroup(&mut self) {
        Q8KRow::regroup(self)
    }
}

/// An activation row quantized to int8 in blocks of 32: x ≈ d[b]·q[i]; `isum[b]` = Σ q over
/// the block (for weight types with an offset: Q4_1, Q5_1, and the VNNI unsigned trick), and
/// `dsum[b]` = d[b]·isum[b] (the same in floats: Q4_0's −8 offset, once per block for eight
/// rows in the eight-row kernel). `qp` is empty, or after [`Q8Row::regroup`] the quants of
/// every whole group of eight blocks in the order the one-row VBMI Q4_0 kernel reads them.
#[derive(Debug, Clone, Default)]
pub struct Q8Row {
    pub qs: Vec<i8>,    // [n]
    pub d: Vec<f32>,    // [n/32]
    pub isum: Vec<i32>, // [n/32]
    pub dsum: Vec<f32>, // [n/32]
    pub qp: Vec<i8>,    // [n/256 · 256] or []
}

/// An activation row quantized to int8 in super-blocks of 256 (K-quants): x ≈ d[b]·q[i];
/// `bsums[g]` = Σ q over each group of 16. `qp` and `ssum` are empty, or after
/// [`Q8KRow::regroup`] the quants in the order the one-row VBMI Q4_K kernel reads them and
/// the sums over each sub-block of 32.
#[derive(Debug, Clone, Default)]
pub struct Q8KRow {
    pub qs: Vec<i8>,     // [n]
    pub d: Vec<f32>,     // [n/256]
    pub bsums: Vec<i32>, // [n/16]
    pub qp: Vec<i8>,     // [n] or []
    pub ssum: Vec<i16>,  // [n/32] or []
}

impl Q8Row {
    /// Resizes for `n` elements (a multiple of 32); allocates only when growing.
    pub fn resize(&mut self, n: usize) {
        self.qs.resize(n, 0);
        self.d.resize(n / QK, 0.0);
        self.isum.resize(n / QK, 0);
        self.dsum.resize(n / QK, 0.0);
        // Whatever was regrouped belonged to the old quants.
        self.qp.clear();
    }

    /// Fills `qp`: per group of eight blocks (256 quants), the first halves (elements 0..16)
    /// of blocks 0..4, their second halves, then the same for blocks 4..8. A Q4_0 block's
    /// byte i holds element i (low nibble) and i + 16 (high nibble), so four blocks' nibble
    /// bytes side by side, masked or shifted, line up with these 64-byte runs (see
    /// `dot::x86::vbmi`). Blocks after the last whole group are left out (the kernel reads
    /// them from `qs`). Allocates only when growing; a few thousand byte copies per token.
    pub fn regroup(&mut self) {
        let groups = self.qs.len() / (8 * QK);
        self.qp.resize(groups * 8 * QK, 0);
        for (dst, src) in self
            .qp
            .chunks_exact_mut(4 * QK)
            .zip(self.qs.chunks_exact(4 * QK))
        {
            // Four blocks: dst[16j + i] = src[32j + i], dst[64 + 16j + i] = src[32j + 16 + i].
            for j in 0..4 {
                dst[16 * j..16 * j + 16].copy_from_slice(&src[32 * j..32 * j + 16]);
                dst[64 + 16 * j..64 + 16 * j + 16].copy_from_slice(&src[32 * j + 16..32 * j + 32]);
            }
        }
    }

    /// [`Q8Row::quantize`] with AVX2 where `isa` has it (the same bits; tested).
    pub fn quantize_isa(&mut self, isa: Isa, x: &[f32]) {
        self.resize(x.len());
        // Mutated only where the x86_64 block below is compiled.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx2 {
            // SAFETY: Isa::Avx2 and above are only reported when AVX2 and FMA are present;
            // `resize` sized every array for x.len() / 32 blocks.
            done = unsafe { self.quantize_avx2(x) };
        }
        let _ = isa;
        self.quantize_blocks(x, done);
    }

    /// A new row quantized from `x` (scalar code; [`Q8Row::quantize`]), regrouped.
    pub fn from_f32(x: &[f32]) -> Q8Row {
        let mut r = Q8Row::default();
        r.quantize(x);
        r.regroup();
        r
    }

    /// Quantizes `x` (length a multiple of 32) into this row: d = max|x|/127, q = round(x/d).
    /// The scalar twin of [`Q8Row::quantize_isa`].
    pub fn quantize(&mut self, x: &[f32]) {
        self.resize(x.len());
        self.quantize_blocks(x, 0);
    }

    /// Blocks `from..` of `x` (already sized).
    fn quantize_blocks(&mut self, x: &[f32], from: usize) {
        for (b, xb) in x.chunks_exact(QK).enumerate().skip(from) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in self.qs[b * QK..(b + 1) * QK].iter_mut().zip(xb) {
                let r = nearest_int(v * id);
                *q = r as i8;
                sum += r;
            }
            self.d[b] = d;
            self.isum[b] = sum;
            self.dsum[b] = d * sum as f32;
        }
    }
}

impl Q8Row {
    /// Blocks of 32 eight lanes at a time; returns how many blocks it did (a block holding a
    /// NaN stops it: the scalar code's `max` skips NaN, the vector one would not).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn quantize_avx2(&mut self, x: &[f32]) -> usize {
        use std::arch::x86_64::*;
        let nb = x.len() / QK;
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let magic = _mm256_set1_ps(12_582_912.0);
        let (mant, bias) = (
            _mm256_set1_epi32(0x007F_FFFF),
            _mm256_set1_epi32(0x0040_0000),
        );
        // packs interleave the 128-bit lanes: dwords (0, 4, 1, 5, 2, 6, 3, 7) put them back.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for b in 0..nb {
            // SAFETY: block b of x holds 32 floats; qs holds 32 per block and d, isum, dsum
            // one (sized by `resize`).
            unsafe {
                let p = x.as_ptr().add(QK * b);
                let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
                let nan = v.iter().fold(_mm256_setzero_ps(), |m, &x| {
                    _mm256_or_ps(m, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
                });
                if _mm256_movemask_ps(nan) != 0 {
                    return b;
                }
                let a: [__m256; 4] = std::array::from_fn(|i| _mm256_and_ps(v[i], abs));
                let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
                let m = _mm256_max_ps(m, _mm256_permute2f128_ps::<1>(m, m));
                let m = _mm256_max_ps(m, _mm256_permute_ps::<0b0100_1110>(m));
                let m = _mm256_max_ps(m, _mm256_permute_ps::<0b1011_0001>(m));
                let amax = _mm256_cvtss_f32(m);
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                let idv = _mm256_set1_ps(id);
                // nearest_int: (v·id + 1.5·2²³)'s low mantissa bits, minus 2²².
                let q: [__m256i; 4] = std::array::from_fn(|i| {
                    let t = _mm256_add_ps(_mm256_mul_ps(v[i], idv), magic);
                    _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(t), mant), bias)
                });
                let s =
                    _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b0100_1110>(s));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b1011_0001>(s));
                let sum = _mm_cvtsi128_si32(s);
                // |q| ≤ 127: the saturating packs keep every value.
                let w = _mm256_packs_epi16(
                    _mm256_packs_epi32(q[0], q[1]),
                    _mm256_packs_epi32(q[2], q[3]),
                );
                let w = _mm256_permutevar8x32_epi32(w, order);
                _mm256_storeu_si256(self.qs.as_mut_ptr().add(QK * b).cast(), w);
                *self.d.get_unchecked_mut(b) = d;
                *self.isum.get_unchecked_mut(b) = sum;
                *self.dsum.get_unchecked_mut(b) = d * sum as f32;
            }
        }
        nb
    }
}

impl Q8KRow {
    pub fn resize(&mut self, n: usize) {
        self.qs.resize(n, 0);
        self.d.resize(n / QK_K, 0.0);
        self.bsums.resize(n / 16, 0);
        // Whatever was regrouped belonged to the old quants.
        self.qp.clear();
        self.ssum.clear();
    }

    /// Fills `qp` and `ssum`. A Q4_K super-block's nibble bytes 0..64 hold sub-blocks 0 and 2
    /// (low nibbles) and 1 and 3 (high), bytes 64..128 sub-blocks 4, 6 and 5, 7; `qp` puts
    /// each super-block's sub-blocks of 32 quants in that order (0, 2, 1, 3, 4, 6, 5, 7), so
    /// the masked or shifted nibble bytes multiply it with plain 64-byte loads (see
    /// `dot::x86::vbmi`). `ssum[s]` = Σ q over sub-block s (|·| ≤ 32·127: fits i16), for the
    /// mins. Allocates only when growing.
    pub fn regroup(&mut self) {
        const ORDER: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];
        self.qp.resize(self.qs.len(), 0);
        for (dst, src) in self
            .qp
            .chunks_exact_mut(QK_K)
            .zip(self.qs.chunks_exact(QK_K))
        {
            for (k, &s) in ORDER.iter().enumerate() {
                dst[32 * k..32 * k + 32].copy_from_slice(&src[32 * s..32 * s + 32]);
            }
        }
        self.ssum.clear();
        self.ssum
            .extend(self.bsums.chunks_exact(2).map(|p| (p[0] + p[1]) as i16));
    }

    /// [`Q8KRow::quantize`] with AVX2 where `isa` has it (the same bits; tested).
    pub fn quantize_isa(&mut self, isa: Isa, x: &[f32]) {
        self.resize(x.len());
        // Mutated only where the x86_64 block below is compiled.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx2 {
            // SAFETY: Isa::Avx2 and above are only reported when AVX2 and FMA are present;
            // `resize` sized every array for x.len() / 256 super-blocks.
            done = unsafe { self.quantize_avx2(x) };
        }
        let _ = isa;
        self.quantize_blocks(x, done);
    }

    /// A new row quantized from `x` (scalar code; [`Q8KRow::quantize`]), regrouped.
    pub fn from_f32(x: &[f32]) -> Q8KRow {
        let mut r = Q8KRow::default();
        r.quantize(x);
        r.regroup();
        r
    }

    /// Quantizes `x` (length a multiple of 256): d = max|x|/127 per super-block, q =
    /// round(x/d). The scalar twin of [`Q8KRow::quantize_isa`].
    pub fn quantize(&mut self, x: &[f32]) {
        self.resize(x.len());
        self.quantize_blocks(x, 0);
    }

    /// Super-blocks `from..` of `x` (already sized).
    fn quantize_blocks(&mut self, x: &[f32], from: usize) {
        for (b, xb) in x.chunks_exact(QK_K).enumerate().skip(from) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (q, v) in self.qs[b * QK_K..(b + 1) * QK_K].iter_mut().zip(xb) {
                *q = nearest_int(v * id) as i8;
            }
            self.d[b] = d;
            for g in 0..QK_K / 16 {
                let s = &self.qs[b * QK_K + g * 16..b * QK_K + g * 16 + 16];
                self.bsums[b * 16 + g] = s.iter().map(|&v| v as i32).sum();
            }
        }
    }

    /// Super-blocks of 256 eight lanes at a time; returns how many it did (one holding a NaN
    /// stops it, as in [`Q8Row`]'s).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn quantize_avx2(&mut self, x: &[f32]) -> usize {
        use std::arch::x86_64::*;
        const V: usize = QK_K / 8;
        let nb = x.len() / QK_K;
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let magic = _mm256_set1_ps(12_582_912.0);
        let (mant, bias) = (
            _mm256_set1_epi32(0x007F_FFFF),
            _mm256_set1_epi32(0x0040_0000),
        );
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for b in 0..nb {
            // SAFETY: super-block b of x holds 256 floats; qs holds 256 per super-block, d
            // one and bsums 16 (sized by `resize`).
            unsafe {
                let p = x.as_ptr().add(QK_K * b);
                let v: [__m256; V] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
                let nan = v.iter().fold(_mm256_setzero_ps(), |m, &x| {
                    _mm256_or_ps(m, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
                });
                if _mm256_movemask_ps(nan) != 0 {
                    return b;
                }
                let m = v.iter().fold(_mm256_setzero_ps(), |m, &x| {
                    _mm256_max_ps(m, _mm256_and_ps(x, abs))
                });
                let m = _mm256_max_ps(m, _mm256_permute2f128_ps::<1>(m, m));
                let m = _mm256_max_ps(m, _mm256_permute_ps::<0b0100_1110>(m));
                let m = _mm256_max_ps(m, _mm256_permute_ps::<0b1011_0001>(m));
                let amax = _mm256_cvtss_f32(m);
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                let idv = _mm256_set1_ps(id);
                // nearest_int as in Q8Row's.
                let q: [__m256i; V] = std::array::from_fn(|i| {
                    let t = _mm256_add_ps(_mm256_mul_ps(v[i], idv), magic);
                    _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(t), mant), bias)
                });
                for k in 0..V / 4 {
                    // |q| ≤ 127: the saturating packs keep every value.
                    let w = _mm256_packs_epi16(
                        _mm256_packs_epi32(q[4 * k], q[4 * k + 1]),
                        _mm256_packs_epi32(q[4 * k + 2], q[4 * k + 3]),
                    );
                    let w = _mm256_permutevar8x32_epi32(w, order);
                    _mm256_storeu_si256(self.qs.as_mut_ptr().add(QK_K * b + 32 * k).cast(), w);
                }
                // Sums of 16: two vectors each; eight at once by two rounds of hadd.
                let pair: [__m256i; 16] =
                    std::array::from_fn(|g| _mm256_add_epi32(q[2 * g], q[2 * g + 1]));
                for h in 0..2 {
                    let p = &pair[8 * h..8 * h + 8];
                    // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | the same for the high lanes].
                    let h01 = _mm256_hadd_epi32(p[0], p[1]);
                    let h23 = _mm256_hadd_epi32(p[2], p[3]);
                    let h45 = _mm256_hadd_epi32(p[4], p[5]);
                    let h67 = _mm256_hadd_epi32(p[6], p[7]);
                    // [s0 s1 s2 s3 | s0' s1' s2' s3'] (low and high 128-bit halves of each).
                    let a = _mm256_hadd_epi32(h01, h23);
                    let c = _mm256_hadd_epi32(h45, h67);
                    let lo = _mm256_permute2x128_si256::<0x20>(a, c);
                    let hi = _mm256_permute2x128_si256::<0x31>(a, c);
                    _mm256_storeu_si256(
                        self.bsums.as_mut_ptr().add(16 * b + 8 * h).cast(),
                        _mm256_add_epi32(lo, hi),
                    );
                }
                *self.d.get_unchecked_mut(b) = d;
            }
        }
        nb
    }
}

/// The largest finite f16.
const F16_MAX: f32 = 65504.0;

/// f32 activations → f16 (the activation form of F16 weights, as ggml's): round to nearest
/// even, saturating at ±65504 so that an outlier stays finite instead of becoming ±inf
/// (ggml's conversion overflows); NaN stays NaN. F16C when `isa` has it, else the scalar twin
/// [`to_f16_scalar`]; the results are bit-identical.
pub fn to_f16(isa: Isa, x: &[f32], out: &mut [f16]) {
    let n = x.len().min(out.len());
    // Mutated only where the x86_64 block below is compiled.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: Isa::Avx2 and above are only reported when AVX2, FMA and F16C are present
        // (`cpu::detect`); both slices hold at least n elements.
        done = unsafe { to_f16_f16c(&x[..n], &mut out[..n]) };
    }
    let _ = isa;
    to_f16_scalar(&x[done..n], &mut out[done..n]);
}

/// The scalar twin of [`to_f16`].
pub fn to_f16_scalar(x: &[f32], out: &mut [f16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        // `clamp` keeps NaN.
        *o = f16::from_f32(v.clamp(-F16_MAX, F16_MAX));
    }
}

/// Converts whole groups of eight; returns how many elements it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn to_f16_f16c(x: &[f32], out: &mut [f16]) -> usize {
    use std::arch::x86_64::*;
    let hi = _mm256_set1_ps(F16_MAX);
    let lo = _mm256_set1_ps(-F16_MAX);
    let mut i = 0;
    while i + 8 <= x.len() {
        // SAFETY: i + 8 ≤ len of both slices (the caller passes equal lengths); f16 is two
        // bytes, so eight of them are one unaligned 128-bit store.
        unsafe {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            // minps/maxps return the second operand when either is NaN: NaN passes through.
            let v = _mm256_max_ps(lo, _mm256_min_ps(hi, v));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), h);
        }
        i += 8;
    }
    i
}

/// Rounds to the nearest integer (ties to even) for |x| < 2²²: adding 1.5·2²³ leaves the
/// integer in the low mantissa bits (ggml's `nearest_int`); no libm call.
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds() {
        for (x, want) in [
            (0.0, 0),
            (0.4, 0),
            (0.6, 1),
            (-0.6, -1),
            (126.7, 127),
            (-127.2, -127),
            (2.5, 2),
            (3.5, 4),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
    }

    /// `nb` blocks of `block` values spanning nine decades, with block 1 zero, one huge value in
    /// block 2, ±inf in block 4 and (last, where the vector loop hands over to the scalar one)
    /// a NaN in the last block.
    fn tricky(block: usize, nb: usize) -> Vec<f32> {
        let mut x: Vec<f32> = (0..(block * nb) as i32)
            .map(|i| (i as f32 * 0.37).sin() * 10f32.powi(i % 9 - 4))
            .collect();
        x[block..2 * block].fill(0.0);
        x[2 * block + 6] = 3e38;
        x[4 * block + 2] = f32::INFINITY;
        x[4 * block + 3] = f32::NEG_INFINITY;
        x[block * (nb - 1) + 5] = f32::NAN;
        x
    }

    #[test]
    fn q8_quantization_matches_scalar_twin() {
        let x = tricky(32, 40);
        let mut want = Q8Row::default();
        want.quantize(&x);
        for isa in Isa::available() {
            let mut got = Q8Row::default();
            got.quantize_isa(isa, &x);
            assert_eq!(got.qs, want.qs, "{isa:?}");
            assert_eq!(got.isum, want.isum, "{isa:?}");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.d), bits(&want.d), "{isa:?}");
            assert_eq!(bits(&got.dsum), bits(&want.dsum), "{isa:?}");
        }
    }

    #[test]
    fn q8k_quantization_matches_scalar_twin() {
        let x = tricky(256, 6);
        let mut want = Q8KRow::default();
        want.quantize(&x);
        for isa in Isa::available() {
            let mut got = Q8KRow::default();
            got.quantize_isa(isa, &x);
            assert_eq!(got.qs, want.qs, "{isa:?}");
            assert_eq!(got.bsums, want.bsums, "{isa:?}");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.d), bits(&want.d), "{isa:?}");
        }
    }

    #[test]
    fn f16_conversion_matches_scalar_twin_and_saturates() {
        let mut x: Vec<f32> = (0..203)
            .map(|i| (i as f32 * 0.61).sin() * 10f32.powi(i % 7 - 2))
            .collect();
        x.extend([
            1e6,
            -1e6,
            65504.0,
            65519.0,
            -65520.0,
            f32::NAN,
            f32::INFINITY,
            1e-8,
        ]);
        let mut want = vec![f16::ZERO; x.len()];
        to_f16_scalar(&x, &mut want);
        for isa in Isa::available() {
            let mut got = vec![f16::ZERO; x.len()];
            to_f16(isa, &x, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{isa:?} element {i}: {x:?} → {g} vs {w}",
                    x = x[i]
                );
            }
        }
        let n = x.len();
        assert_eq!(want[n - 8].to_f32(), 65504.0);
        assert_eq!(want[n - 7].to_f32(), -65504.0);
        assert!(want[n - 3].is_nan());
        assert_eq!(want[n - 2].to_f32(), 65504.0);
        // Below the limit, plain rounding to nearest: 1e-8 is under half the smallest f16
        // subnormal (6e-8), so it becomes zero.
        assert_eq!(want[n - 1].to_f32(), 0.0);
    }
}
