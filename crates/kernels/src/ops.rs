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

pub use crate::attn::{attend_group, KvElem, KvRows, Paged, Segmented};

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
