//! Attention of one token's query heads against cached keys and values.
//!
//! The cache may hold F32 or F16 (half the bytes: a batched decode step reads every
//! sequence's keys and values, which for many sequences weighs as much as the weights). The
//! AVX2 kernel and its scalar twin give the same bits: the same fused multiply-adds in the
//! same order, and F16 → F32 conversion is exact (tested below).

use half::f16;

use crate::cpu::Isa;
use crate::ops::softmax;

/// An element type of a KV cache.
///
/// # Safety
/// Implementors are plain floats: every bit pattern, the all-zero one (= 0.0) included, is a
/// valid value, so pools may be allocated zeroed (lazily, by the OS) rather than written.
pub unsafe trait KvElem: Copy + Default + Send + Sync + 'static {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Bytes per element.
    const BYTES: usize;
    /// q·k for four rows (`AVX`: only inside functions compiled with AVX2, FMA and F16C).
    fn dot4<const AVX: bool>(q: &[f32], k: [&[Self]; 4]) -> [f32; 4];
    /// o += Σᵣ s[r]·v[r] over four rows.
    fn axpy4<const AVX: bool>(o: &mut [f32], s: [f32; 4], v: [&[Self]; 4]);
}

/// The kernels of an element type: the AVX2 versions where `AVX` (checked by the caller),
/// the scalar twins otherwise.
macro_rules! kv_elem_kernels {
    ($dot:ident, $axpy:ident) => {
        #[inline(always)]
        fn dot4<const AVX: bool>(q: &[f32], k: [&[Self]; 4]) -> [f32; 4] {
            #[cfg(target_arch = "x86_64")]
            if AVX {
                // SAFETY: AVX is true only in `attend_group_avx2`, run when the CPU has AVX2,
                // FMA and F16C.
                return unsafe { x86::$dot(q, k) };
            }
            dot4_scalar(q, k)
        }
        #[inline(always)]
        fn axpy4<const AVX: bool>(o: &mut [f32], s: [f32; 4], v: [&[Self]; 4]) {
            #[cfg(target_arch = "x86_64")]
            if AVX {
                // SAFETY: as in `dot4`.
                return unsafe { x86::$axpy(o, s, v) };
            }
            axpy4_scalar(o, s, v)
        }
    };
}

// SAFETY: f32 is a plain float; all-zero bits are 0.0.
unsafe impl KvElem for f32 {
    const BYTES: usize = 4;
    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    kv_elem_kernels!(dot4_f32, axpy4_f32);
}

// SAFETY: f16 is a plain 16-bit float; all-zero bits are 0.0.
unsafe impl KvElem for f16 {
    const BYTES: usize = 2;
    #[inline(always)]
    fn from_f32(x: f32) -> f16 {
        f16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    kv_elem_kernels!(dot4_f16, axpy4_f16);
}

/// Where one layer's cached keys and values live, position by position: a sequence's rows may
/// sit in two segments (a shared prompt prefix and its own rows) or in fixed-size blocks of a
/// paged pool. `key(p, h)` is KV head h's `head_dim` elements at position p.
pub trait KvRows {
    type Elem: KvElem;
    fn key(&self, p: usize, head: usize) -> &[Self::Elem];
    fn value(&self, p: usize, head: usize) -> &[Self::Elem];
}

/// Rows in up to two segments: positions `0..split` are rows of `keys[0]` / `values[0]` (the
/// shared prefix), the rest rows of `keys[1]` / `values[1]`; rows are `stride` floats apart
/// (every KV head's `hd` floats in turn).
#[derive(Debug, Clone, Copy)]
pub struct Segmented<'a> {
    pub keys: [&'a [f32]; 2],
    pub values: [&'a [f32]; 2],
    pub split: usize,
    pub stride: usize,
    pub hd: usize,
}

impl Segmented<'_> {
    #[inline(always)]
    fn at<'s>(&self, seg: [&'s [f32]; 2], p: usize, head: usize) -> &'s [f32] {
        // The branch goes the same way for long runs of p.
        let (s, r) = if p < self.split {
            (seg[0], p)
        } else {
            (seg[1], p - self.split)
        };
        let o = r * self.stride + head * self.hd;
        &s[o..o + self.hd]
    }
}

impl KvRows for Segmented<'_> {
    type Elem = f32;
    #[inline(always)]
    fn key(&self, p: usize, head: usize) -> &[f32] {
        self.at(self.keys, p, head)
    }
    #[inline(always)]
    fn value(&self, p: usize, head: usize) -> &[f32] {
        self.at(self.values, p, head)
    }
}

/// Rows in a paged pool, head-major inside each block so that one head's positions are
/// contiguous (`[n_blocks, n_kv_head, B, hd]`, B = 2^`block_shift`): position p of head h is
/// row `p mod B` of head h in block `table[p / B]`. `keys` / `values` are one layer's pool.
#[derive(Debug, Clone, Copy)]
pub struct Paged<'a, T> {
    pub keys: &'a [T],
    pub values: &'a [T],
    pub table: &'a [u32],
    pub block_shift: u32,
    pub n_kv_head: usize,
    pub hd: usize,
}

impl<T> Paged<'_, T> {
    #[inline(always)]
    fn offset(&self, p: usize, head: usize) -> usize {
        let b = self.table[p >> self.block_shift] as usize;
        (((b * self.n_kv_head + head) << self.block_shift) + (p & ((1 << self.block_shift) - 1)))
            * self.hd
    }
}

impl<T: KvElem> KvRows for Paged<'_, T> {
    type Elem = T;
    #[inline(always)]
    fn key(&self, p: usize, head: usize) -> &[T] {
        let o = self.offset(p, head);
        &self.keys[o..o + self.hd]
    }
    #[inline(always)]
    fn value(&self, p: usize, head: usize) -> &[T] {
        let o = self.offset(p, head);
        &self.values[o..o + self.hd]
    }
}

/// Causal attention of the query heads that share one KV head, for one token:
/// for each head g, s = softmax(q_g · K[p]ᵀ · scale) over positions p < len, then
/// out_g = Σ_p s[p] · V[p], over positions `start..len` (`start` > 0 for a sliding window).
/// `q` is `[group, hd]`; `rows` gives KV head `head`'s cached rows by position; `softcap` > 0
/// replaces each scaled score s by softcap·tanh(s/softcap) (Gemma 2); `scores` is scratch of
/// at least `group · (len − start)`; `out` is `[group, hd]`.
#[allow(clippy::too_many_arguments)]
pub fn attend_group<R: KvRows>(
    isa: Isa,
    q: &[f32],
    rows: &R,
    head: usize,
    hd: usize,
    start: usize,
    len: usize,
    scale: f32,
    softcap: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: Avx2 or better is reported by run-time detection only when AVX2, FMA and
        // F16C are present.
        unsafe { attend_group_avx2(q, rows, head, hd, start, len, scale, softcap, scores, out) };
        return;
    }
    let _ = isa;
    attend_group_body::<false, R>(q, rows, head, hd, start, len, scale, softcap, scores, out)
}

/// The same code with the AVX2/FMA/F16C helpers inlined.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_group_avx2<R: KvRows>(
    q: &[f32],
    rows: &R,
    head: usize,
    hd: usize,
    start: usize,
    len: usize,
    scale: f32,
    softcap: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_group_body::<true, R>(q, rows, head, hd, start, len, scale, softcap, scores, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_group_body<const AVX: bool, R: KvRows>(
    q: &[f32],
    rows: &R,
    head: usize,
    hd: usize,
    start: usize,
    len: usize,
    scale: f32,
    softcap: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = q.len() / hd;
    // Positions start..len take part (a sliding window starts after 0); scores are [group, m].
    let m = len - start;
    let cap = |s: f32| {
        let s = s * scale;
        // Gemma 2 caps the scores: c·tanh(s/c) (0 = off).
        if softcap > 0.0 {
            softcap * (s / softcap).tanh()
        } else {
            s
        }
    };
    // Scores, four positions at a time: four independent chains of fused multiply-adds
    // instead of one (a single accumulator waits on each FMA's latency).
    let mut p = start;
    while p < len {
        // The last group repeats its final row (the spare results are not stored).
        let ks: [&[R::Elem]; 4] = std::array::from_fn(|i| rows.key((p + i).min(len - 1), head));
        for g in 0..group {
            let d = R::Elem::dot4::<AVX>(&q[g * hd..(g + 1) * hd], ks);
            for (i, v) in d.into_iter().enumerate().take(len - p) {
                scores[g * m + p + i - start] = cap(v);
            }
        }
        p += 4;
    }
    for g in 0..group {
        softmax(&mut scores[g * m..(g + 1) * m]);
    }
    out[..group * hd].fill(0.0);
    // Values, four positions per pass over the output: a quarter of the loads and stores.
    let mut p = start;
    while p < len {
        let vs: [&[R::Elem]; 4] = std::array::from_fn(|i| rows.value((p + i).min(len - 1), head));
        for g in 0..group {
            // Past the end the weights are 0: adding 0·v leaves the output as it is.
            let s: [f32; 4] = std::array::from_fn(|i| {
                if p + i < len {
                    scores[g * m + p + i - start]
                } else {
                    0.0
                }
            });
            R::Elem::axpy4::<AVX>(&mut out[g * hd..(g + 1) * hd], s, vs);
        }
        p += 4;
    }
}

/// q·k for four key rows (each as long as q): eight lanes per row and two accumulators per
/// row (even and odd chunks of eight: eight independent FMA chains in all, enough to keep
/// both FMA units busy), summed as the AVX2 twin sums its registers (even + odd, then lanes j
/// and j+4, then pairs), so that both give the same bits (an int8-quantized activation
/// downstream would amplify any difference).
#[inline(always)]
fn dot4_scalar<T: KvElem>(q: &[f32], k: [&[T]; 4]) -> [f32; 4] {
    let n = q.len();
    let mut out = [0f32; 4];
    let chunks = n / 8;
    for (r, o) in out.iter_mut().enumerate() {
        let kr = &k[r][..n];
        let mut acc = [[0f32; 8]; 2];
        for c in 0..chunks {
            let a = &mut acc[c & 1];
            for j in 0..8 {
                a[j] = q[c * 8 + j].mul_add(kr[c * 8 + j].to_f32(), a[j]);
            }
        }
        let l: [f32; 8] = std::array::from_fn(|j| acc[0][j] + acc[1][j]);
        let h: [f32; 4] = std::array::from_fn(|j| l[j] + l[j + 4]);
        let (a, b) = (h[0] + h[2], h[1] + h[3]);
        *o = a + b;
        for i in chunks * 8..n {
            *o += q[i] * kr[i].to_f32();
        }
    }
    out
}

/// o += Σᵣ s[r]·v[r]: the same fused steps as the AVX2 twin, lane by lane.
#[inline(always)]
fn axpy4_scalar<T: KvElem>(o: &mut [f32], s: [f32; 4], v: [&[T]; 4]) {
    let n = o.len();
    let (v0, v1, v2, v3) = (&v[0][..n], &v[1][..n], &v[2][..n], &v[3][..n]);
    let body = n / 8 * 8;
    for (i, oi) in o[..body].iter_mut().enumerate() {
        let a = s[0].mul_add(v0[i].to_f32(), *oi);
        let a = s[1].mul_add(v1[i].to_f32(), a);
        let a = s[2].mul_add(v2[i].to_f32(), a);
        *oi = s[3].mul_add(v3[i].to_f32(), a);
    }
    for i in body..n {
        o[i] += s[0] * v0[i].to_f32()
            + s[1] * v1[i].to_f32()
            + s[2] * v2[i].to_f32()
            + s[3] * v3[i].to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::KvElem;

    /// Horizontal sum of eight lanes: (j + j+4), then pairs — the scalar twin's order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Eight elements from `p` as f32.
    trait Load8: KvElem {
        /// # Safety
        /// `p` must point at 8 readable elements; the CPU must have AVX2 and F16C.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_ps(p) }
        }
    }

    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: the caller's contract (8 halves are 16 bytes).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot4<T: Load8>(q: &[f32], k: [&[T]; 4]) -> [f32; 4] {
        let n = q.len();
        assert!(k.iter().all(|r| r.len() >= n));
        // Two accumulators per row (even and odd chunks): eight independent chains.
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let chunks = n / 8;
        for c in 0..chunks {
            // SAFETY: c·8 + 8 ≤ n ≤ every row's length (asserted); features enabled here.
            unsafe {
                let qv = _mm256_loadu_ps(q.as_ptr().add(c * 8));
                for r in 0..4 {
                    let a = &mut acc[r][c & 1];
                    *a = _mm256_fmadd_ps(qv, T::load8(k[r].as_ptr().add(c * 8)), *a);
                }
            }
        }
        let mut out = [0f32; 4];
        for r in 0..4 {
            out[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
            for i in chunks * 8..n {
                out[r] += q[i] * k[r][i].to_f32();
            }
        }
        out
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn axpy4<T: Load8>(o: &mut [f32], s: [f32; 4], v: [&[T]; 4]) {
        let n = o.len();
        assert!(v.iter().all(|r| r.len() >= n));
        let sv = s.map(|x| _mm256_set1_ps(x));
        let chunks = n / 8;
        for c in 0..chunks {
            // SAFETY: c·8 + 8 ≤ n ≤ every row's length (asserted); features enabled here.
            unsafe {
                let p = o.as_mut_ptr().add(c * 8);
                let mut acc = _mm256_loadu_ps(p);
                for r in 0..4 {
                    acc = _mm256_fmadd_ps(sv[r], T::load8(v[r].as_ptr().add(c * 8)), acc);
                }
                _mm256_storeu_ps(p, acc);
            }
        }
        for i in chunks * 8..n {
            o[i] += s[0] * v[0][i].to_f32()
                + s[1] * v[1][i].to_f32()
                + s[2] * v[2][i].to_f32()
                + s[3] * v[3][i].to_f32();
        }
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_f32(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
        dot4(q, k)
    }
    /// # Safety
    /// As [`dot4_f32`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_f16(q: &[f32], k: [&[f16]; 4]) -> [f32; 4] {
        dot4(q, k)
    }
    /// # Safety
    /// As [`dot4_f32`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy4_f32(o: &mut [f32], s: [f32; 4], v: [&[f32]; 4]) {
        axpy4(o, s, v)
    }
    /// # Safety
    /// As [`dot4_f32`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy4_f16(o: &mut [f32], s: [f32; 4], v: [&[f16]; 4]) {
        axpy4(o, s, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::detect;

    fn rnd(seed: &mut u64) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }

    /// The rows `keys`/`values` (`[len, n_kv, hd]`) in a paged layout of element T: blocks of
    /// 4 positions, in a scrambled order.
    fn paged<T: KvElem>(
        keys: &[f32],
        values: &[f32],
        len: usize,
        n_kv: usize,
        hd: usize,
    ) -> (Vec<T>, Vec<T>, Vec<u32>) {
        let nb = len.div_ceil(4);
        let table: Vec<u32> = (0..nb as u32).map(|b| (b * 7) % nb as u32).collect();
        let mut pk = vec![T::default(); nb * n_kv * 4 * hd];
        let mut pv = pk.clone();
        for p in 0..len {
            for h in 0..n_kv {
                let o = ((table[p / 4] as usize * n_kv + h) * 4 + p % 4) * hd;
                let src = (p * n_kv + h) * hd;
                for i in 0..hd {
                    pk[o + i] = T::from_f32(keys[src + i]);
                    pv[o + i] = T::from_f32(values[src + i]);
                }
            }
        }
        (pk, pv, table)
    }

    /// The AVX2 kernel gives the scalar twin's bits (same fused steps, same reduction order)
    /// over segmented and paged rows, F32 and F16, with and without a window and cap; paged
    /// F32 rows give what segmented ones give; F16 rows what F32 rows rounded to F16 give
    /// (checked against a plain f64 reference within F16's precision).
    #[test]
    fn simd_equals_scalar_bitwise_and_layouts_agree() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let (n_kv, hd, group, len) = (3, 72, 2, 45);
        let keys: Vec<f32> = (0..len * n_kv * hd).map(|_| rnd(&mut seed)).collect();
        let values: Vec<f32> = (0..len * n_kv * hd).map(|_| rnd(&mut seed)).collect();
        let q: Vec<f32> = (0..group * hd).map(|_| rnd(&mut seed)).collect();
        let split = 10 * n_kv * hd;
        let seg = Segmented {
            keys: [&keys[..split], &keys[split..]],
            values: [&values[..split], &values[split..]],
            split: 10,
            stride: n_kv * hd,
            hd,
        };
        let (k32, v32, t) = paged::<f32>(&keys, &values, len, n_kv, hd);
        let (k16, v16, _) = paged::<f16>(&keys, &values, len, n_kv, hd);
        let p32 = Paged {
            keys: &k32[..],
            values: &v32[..],
            table: &t,
            block_shift: 2,
            n_kv_head: n_kv,
            hd,
        };
        let p16 = Paged {
            keys: &k16[..],
            values: &v16[..],
            table: &t,
            block_shift: 2,
            n_kv_head: n_kv,
            hd,
        };
        for (start, cap) in [(0, 0.0), (13, 0.0), (0, 5.0), (43, 0.0)] {
            for head in 0..n_kv {
                let mut f32s = Vec::new();
                let mut f16s = Vec::new();
                for isa in [Isa::Scalar, detect()] {
                    let mut sc = vec![0f32; group * len];
                    let mut a = vec![0f32; group * hd];
                    let mut b = vec![0f32; group * hd];
                    let mut c = vec![0f32; group * hd];
                    attend_group(
                        isa, &q, &seg, head, hd, start, len, 0.125, cap, &mut sc, &mut a,
                    );
                    attend_group(
                        isa, &q, &p32, head, hd, start, len, 0.125, cap, &mut sc, &mut b,
                    );
                    attend_group(
                        isa, &q, &p16, head, hd, start, len, 0.125, cap, &mut sc, &mut c,
                    );
                    assert_eq!(a, b, "segmented and paged rows differ");
                    f32s.push(a);
                    f16s.push(c);
                }
                assert_eq!(f32s[0], f32s[1], "F32: scalar and {:?} differ", detect());
                assert_eq!(f16s[0], f16s[1], "F16: scalar and {:?} differ", detect());
                // F16 storage costs about F16's precision, no more.
                let err = f32s[0]
                    .iter()
                    .zip(&f16s[0])
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(err < 2e-3, "F16 vs F32 rows: {err}");
            }
        }
    }

    /// Against a direct f64 computation of softmax(q·K·scale)·V.
    #[test]
    fn matches_a_reference() {
        let mut seed = 42u64;
        let (hd, len) = (16, 9);
        let keys: Vec<f32> = (0..len * hd).map(|_| rnd(&mut seed)).collect();
        let values: Vec<f32> = (0..len * hd).map(|_| rnd(&mut seed)).collect();
        let q: Vec<f32> = (0..hd).map(|_| rnd(&mut seed) * 4.0).collect();
        let seg = Segmented {
            keys: [&[], &keys],
            values: [&[], &values],
            split: 0,
            stride: hd,
            hd,
        };
        let s: Vec<f64> = (0..len)
            .map(|p| {
                (0..hd)
                    .map(|i| q[i] as f64 * keys[p * hd + i] as f64)
                    .sum::<f64>()
                    * 0.5
            })
            .collect();
        let mx = s.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
        let z: f64 = e.iter().sum();
        for isa in [Isa::Scalar, detect()] {
            let mut sc = vec![0f32; len];
            let mut out = vec![0f32; hd];
            attend_group(isa, &q, &seg, 0, hd, 0, len, 0.5, 0.0, &mut sc, &mut out);
            for i in 0..hd {
                let want: f64 = (0..len).map(|p| e[p] / z * values[p * hd + i] as f64).sum();
                assert!((out[i] as f64 - want).abs() < 1e-5, "{isa:?} dim {i}");
            }
        }
    }
}
