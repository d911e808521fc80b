//! Activations prepared for dot products with quantized weights (ggml's "vec_dot_type"):
//! each row of activations is quantized once per matrix product and then dotted with every
//! weight row. Internal formats (not GGUF): scales are kept in f32 for accuracy.

use crate::blocks::{QK, QK_K};

/// An activation row quantized to int8 in blocks of 32: x ≈ d[b]·q[i]; `isum[b]` = Σ q over
/// the block (for weight types with an offset: Q4_1, Q5_1, and the VNNI unsigned trick).
#[derive(Debug, Clone, Default)]
pub struct Q8Row {
    pub qs: Vec<i8>,    // [n]
    pub d: Vec<f32>,    // [n/32]
    pub isum: Vec<i32>, // [n/32]
}

/// An activation row quantized to int8 in super-blocks of 256 (K-quants): x ≈ d[b]·q[i];
/// `bsums[g]` = Σ q over each group of 16.
#[derive(Debug, Clone, Default)]
pub struct Q8KRow {
    pub qs: Vec<i8>,     // [n]
    pub d: Vec<f32>,     // [n/256]
    pub bsums: Vec<i32>, // [n/16]
}

impl Q8Row {
    /// Resizes for `n` elements (a multiple of 32); allocates only when growing.
    pub fn resize(&mut self, n: usize) {
        self.qs.resize(n, 0);
        self.d.resize(n / QK, 0.0);
        self.isum.resize(n / QK, 0);
    }

    /// Quantizes `x` (length a multiple of 32) into this row: d = max|x|/127, q = round(x/d).
    pub fn quantize(&mut self, x: &[f32]) {
        self.resize(x.len());
        for (b, xb) in x.chunks_exact(QK).enumerate() {
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
        }
    }
}

impl Q8KRow {
    pub fn resize(&mut self, n: usize) {
        self.qs.resize(n, 0);
        self.d.resize(n / QK_K, 0.0);
        self.bsums.resize(n / 16, 0);
    }

    /// Quantizes `x` (length a multiple of 256).
    pub fn quantize(&mut self, x: &[f32]) {
        self.resize(x.len());
        for (b, xb) in x.chunks_exact(QK_K).enumerate() {
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
}
