//! Float operations of a decoder layer (scalar reference versions).

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
        let (ia, ib) = match layout {
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            RopeLayout::NeoX => (i, i + n_rot / 2),
        };
        let a = head[ia];
        let b = head[ib];
        head[ia] = a * cos - b * sin;
        head[ib] = a * sin + b * cos;
    }
}

/// Where one layer's cached keys and values live, position by position: a sequence's rows may
/// sit in two segments (a shared prompt prefix and its own rows) or in fixed-size blocks of a
/// paged pool. `key(p, h)` is KV head h's `head_dim` floats at position p.
pub trait KvRows {
    fn key(&self, p: usize, head: usize) -> &[f32];
    fn value(&self, p: usize, head: usize) -> &[f32];
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
pub struct Paged<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub table: &'a [u32],
    pub block_shift: u32,
    pub n_kv_head: usize,
    pub hd: usize,
}

impl Paged<'_> {
    #[inline(always)]
    fn offset(&self, p: usize, head: usize) -> usize {
        let b = self.table[p >> self.block_shift] as usize;
        (((b * self.n_kv_head + head) << self.block_shift) + (p & ((1 << self.block_shift) - 1)))
            * self.hd
    }
}

impl KvRows for Paged<'_> {
    #[inline(always)]
    fn key(&self, p: usize, head: usize) -> &[f32] {
        let o = self.offset(p, head);
        &self.keys[o..o + self.hd]
    }
    #[inline(always)]
    fn value(&self, p: usize, head: usize) -> &[f32] {
        let o = self.offset(p, head);
        &self.values[o..o + self.hd]
    }
}

/// Causal attention of the query heads that share one KV head, for one token:
/// for each head g, s = softmax(q_g · K[p]ᵀ · scale) over positions p < len, then
/// out_g = Σ_p s[p] · V[p], over positions `start..len` (`start` > 0 for a sliding window).
/// `q` is `[group, hd]`; `rows` gives KV head `head`'s cached rows by position; `softcap` > 0 replaces each scaled score s by softcap·tanh(s/softcap)
/// (Gemma 2); `scores` is scratch of at least `group · (len − start)`; `out` is `[group, hd]`.
#[allow(clippy::too_many_arguments)]
pub fn attend_group<R: KvRows>(
    isa: crate::cpu::Isa,
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
    if isa >= crate::cpu::Isa::Avx2 {
        // SAFETY: Avx2 or better is reported by run-time detection only when AVX2 and FMA
        // are present.
        unsafe { attend_group_avx2(q, rows, head, hd, start, len, scale, softcap, scores, out) };
        return;
    }
    let _ = isa;
    attend_group_body::<false, R>(q, rows, head, hd, start, len, scale, softcap, scores, out)
}

/// The same code compiled with AVX2 and FMA enabled (the loops vectorize 8 wide with fused
/// multiply-adds instead of the x86_64 baseline's 4-wide SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
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
    while p + 4 <= len {
        let ks: [&[f32]; 4] = std::array::from_fn(|i| rows.key(p + i, head));
        for g in 0..group {
            let qg = &q[g * hd..(g + 1) * hd];
            let d = dot4_x::<AVX>(qg, ks);
            for (i, v) in d.into_iter().enumerate() {
                scores[g * m + p + i - start] = cap(v);
            }
        }
        p += 4;
    }
    while p < len {
        let k = rows.key(p, head);
        for g in 0..group {
            let qg = &q[g * hd..(g + 1) * hd];
            scores[g * m + p - start] = cap(dot4_x::<AVX>(qg, [k, k, k, k])[0]);
        }
        p += 1;
    }
    for g in 0..group {
        softmax(&mut scores[g * m..(g + 1) * m]);
    }
    out[..group * hd].fill(0.0);
    // Values, four positions per pass over the output: a quarter of the loads and stores.
    let mut p = start;
    while p + 4 <= len {
        let vs: [&[f32]; 4] = std::array::from_fn(|i| rows.value(p + i, head));
        for g in 0..group {
            let i = g * m + p - start;
            let s = [scores[i], scores[i + 1], scores[i + 2], scores[i + 3]];
            axpy4_x::<AVX>(&mut out[g * hd..(g + 1) * hd], s, vs);
        }
        p += 4;
    }
    while p < len {
        let v = rows.value(p, head);
        for g in 0..group {
            let s = scores[g * m + p - start];
            let o = &mut out[g * hd..(g + 1) * hd];
            for (oi, vi) in o.iter_mut().zip(v) {
                *oi += s * vi;
            }
        }
        p += 1;
    }
}

/// [`dot4`], with AVX2/FMA when `AVX` (only inside functions compiled with those features).
#[inline(always)]
fn dot4_x<const AVX: bool>(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is true only in `attend_group_avx2`, run when the CPU has AVX2 and FMA.
        return unsafe { x86::dot4(q, k) };
    }
    dot4(q, k)
}

/// o += Σᵢ s[i]·v[i] over four rows, with AVX2/FMA when `AVX`.
#[inline(always)]
fn axpy4_x<const AVX: bool>(o: &mut [f32], s: [f32; 4], v: [&[f32]; 4]) {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: as in `dot4_x`.
        return unsafe { x86::axpy4(o, s, v) };
    }
    // The same fused steps as the AVX2 twin, lane by lane.
    let n = o.len();
    let (v0, v1, v2, v3) = (&v[0][..n], &v[1][..n], &v[2][..n], &v[3][..n]);
    let body = n / 8 * 8;
    for (i, oi) in o[..body].iter_mut().enumerate() {
        let a = s[0].mul_add(v0[i], *oi);
        let a = s[1].mul_add(v1[i], a);
        let a = s[2].mul_add(v2[i], a);
        *oi = s[3].mul_add(v3[i], a);
    }
    for i in body..n {
        o[i] += s[0] * v0[i] + s[1] * v1[i] + s[2] * v2[i] + s[3] * v3[i];
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Horizontal sum of eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// q·k for four rows: four independent FMA chains.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
        let n = q.len();
        assert!(k.iter().all(|r| r.len() >= n));
        let mut acc = [_mm256_setzero_ps(); 4];
        let chunks = n / 8;
        for c in 0..chunks {
            // SAFETY: c·8 + 8 ≤ n ≤ every row's length (asserted).
            unsafe {
                let qv = _mm256_loadu_ps(q.as_ptr().add(c * 8));
                for r in 0..4 {
                    let kv = _mm256_loadu_ps(k[r].as_ptr().add(c * 8));
                    acc[r] = _mm256_fmadd_ps(qv, kv, acc[r]);
                }
            }
        }
        let mut out = [0f32; 4];
        for r in 0..4 {
            out[r] = unsafe { hsum(acc[r]) };
            for i in chunks * 8..n {
                out[r] += q[i] * k[r][i];
            }
        }
        out
    }

    /// o += Σᵣ s[r]·v[r].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy4(o: &mut [f32], s: [f32; 4], v: [&[f32]; 4]) {
        let n = o.len();
        assert!(v.iter().all(|r| r.len() >= n));
        let sv = s.map(|x| _mm256_set1_ps(x));
        let chunks = n / 8;
        for c in 0..chunks {
            // SAFETY: c·8 + 8 ≤ n ≤ every row's length (asserted).
            unsafe {
                let p = o.as_mut_ptr().add(c * 8);
                let mut acc = _mm256_loadu_ps(p);
                for r in 0..4 {
                    acc = _mm256_fmadd_ps(sv[r], _mm256_loadu_ps(v[r].as_ptr().add(c * 8)), acc);
                }
                _mm256_storeu_ps(p, acc);
            }
        }
        for i in chunks * 8..n {
            o[i] += s[0] * v[0][i] + s[1] * v[1][i] + s[2] * v[2][i] + s[3] * v[3][i];
        }
    }
}

/// q·k for four key rows (each as long as q): eight lanes per row with fused multiply-adds,
/// summed as the AVX2 twin sums its register (lanes j and j+4, then pairs), so that both give
/// the same bits (an int8-quantized activation downstream would amplify any difference).
#[inline(always)]
fn dot4(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
    let n = q.len();
    let mut out = [0f32; 4];
    let chunks = n / 8;
    for (r, o) in out.iter_mut().enumerate() {
        let kr = &k[r][..n];
        let mut acc = [0f32; 8];
        for c in 0..chunks {
            for j in 0..8 {
                acc[j] = q[c * 8 + j].mul_add(kr[c * 8 + j], acc[j]);
            }
        }
        let h: [f32; 4] = std::array::from_fn(|j| acc[j] + acc[j + 4]);
        let (a, b) = (h[0] + h[2], h[1] + h[3]);
        *o = a + b;
        for i in chunks * 8..n {
            *o += q[i] * kr[i];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

#[cfg(test)]
mod attention_twins {
    use super::*;
    use crate::cpu::{detect, Isa};

    /// The AVX2 attention kernel gives the scalar twin's bits (same fused steps, same
    /// reduction order), over segmented and paged rows, with and without a window and cap.
    #[test]
    fn attend_group_simd_equals_scalar_bitwise() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let (n_kv, hd, group, len) = (3, 72, 2, 45);
        let keys: Vec<f32> = (0..len * n_kv * hd).map(|_| rnd()).collect();
        let values: Vec<f32> = (0..len * n_kv * hd).map(|_| rnd()).collect();
        let q: Vec<f32> = (0..group * hd).map(|_| rnd()).collect();
        let seg = Segmented {
            keys: [&keys[..10 * n_kv * hd], &keys[10 * n_kv * hd..]],
            values: [&values[..10 * n_kv * hd], &values[10 * n_kv * hd..]],
            split: 10,
            stride: n_kv * hd,
            hd,
        };
        // The same rows in a paged layout: blocks of 4, in a scrambled order.
        let nb = len.div_ceil(4);
        let table: Vec<u32> = (0..nb as u32).map(|b| (b * 7) % nb as u32).collect();
        let mut pk = vec![0f32; nb * n_kv * 4 * hd];
        let mut pv = pk.clone();
        for p in 0..len {
            for h in 0..n_kv {
                let o = ((table[p / 4] as usize * n_kv + h) * 4 + p % 4) * hd;
                let src = (p * n_kv + h) * hd;
                pk[o..o + hd].copy_from_slice(&keys[src..src + hd]);
                pv[o..o + hd].copy_from_slice(&values[src..src + hd]);
            }
        }
        let paged = Paged {
            keys: &pk,
            values: &pv,
            table: &table,
            block_shift: 2,
            n_kv_head: n_kv,
            hd,
        };
        for (start, cap) in [(0, 0.0), (13, 0.0), (0, 5.0)] {
            for head in 0..n_kv {
                let mut outs = Vec::new();
                for isa in [Isa::Scalar, detect()] {
                    let mut sc = vec![0f32; group * len];
                    let mut a = vec![0f32; group * hd];
                    let mut b = vec![0f32; group * hd];
                    attend_group(
                        isa, &q, &seg, head, hd, start, len, 0.125, cap, &mut sc, &mut a,
                    );
                    attend_group(
                        isa, &q, &paged, head, hd, start, len, 0.125, cap, &mut sc, &mut b,
                    );
                    assert_eq!(a, b, "segmented and paged rows differ");
                    outs.push(a);
                }
                assert_eq!(outs[0], outs[1], "scalar and {:?} differ", detect());
            }
        }
    }
}
