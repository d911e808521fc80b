//! Scalar reference quantizers (ggml's `quantize_row_*_ref`), used by the GGUF writer, the
//! tests and the quantizer tool.

use crate::blocks::*;
use crate::KernelError;
use tuili_core::DType;

/// Quantizes `src` into `dst` (exactly the bytes `dtype` needs for `src.len()` elements).
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    crate::check_row(dtype, src.len(), dst.len())?;
    let bl = dtype.block_len() as usize;
    let bs = dtype.block_bytes() as usize;
    match dtype {
        DType::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        DType::F16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f16_to_le(*s));
            }
        }
        DType::BF16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::bf16::from_f32(*s).to_bits().to_le_bytes());
            }
        }
        DType::Q8_0 => {
            for (d, x) in dst.chunks_exact_mut(bs).zip(src.chunks_exact(bl)) {
                q8_0_block(x, d);
            }
        }
        DType::Q4_0 => {
            for (d, x) in dst.chunks_exact_mut(bs).zip(src.chunks_exact(bl)) {
                q4_0_block(x, d);
            }
        }
        DType::Q4_1 => {
            for (d, x) in dst.chunks_exact_mut(bs).zip(src.chunks_exact(bl)) {
                q4_1_block(x, d);
            }
        }
        DType::Q5_0 => {
            for (d, x) in dst.chunks_exact_mut(bs).zip(src.chunks_exact(bl)) {
                q5_0_block(x, d);
            }
        }
        DType::Q5_1 => {
            for (d, x) in dst.chunks_exact_mut(bs).zip(src.chunks_exact(bl)) {
                q5_1_block(x, d);
            }
        }
        DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => {
            let f = match dtype {
                DType::Q2_K => crate::kquant::q2_k_block,
                DType::Q3_K => crate::kquant::q3_k_block,
                DType::Q4_K => crate::kquant::q4_k_block,
                DType::Q5_K => crate::kquant::q5_k_block,
                _ => crate::kquant::q6_k_block,
            };
            for (d, x) in dst.chunks_exact_mut(bs).zip(src.chunks_exact(bl)) {
                f(x, d);
            }
        }
        DType::Q8_K => {
            for (d, x) in dst.chunks_exact_mut(bs).zip(src.chunks_exact(bl)) {
                q8_k_block(x, d);
            }
        }
        _ => return Err(KernelError::NoQuantizer { dtype }),
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequant::dequantize_row;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0 + 0.1 * (i as f32 * 0.37).sin()
            })
            .collect()
    }

    /// Round trip error bounds, as ggml's test-quantize-fns uses (RMSE over random data).
    #[test]
    fn round_trip_errors_within_ggml_bounds() {
        let x = data(4096, 7);
        for (dtype, bound) in [
            (DType::F32, 1e-7),
            (DType::F16, 1e-3),
            (DType::BF16, 1e-2),
            (DType::Q8_0, 0.004),
            (DType::Q8_K, 0.004),
            (DType::Q5_0, 0.02),
            (DType::Q5_1, 0.02),
            (DType::Q4_0, 0.04),
            (DType::Q4_1, 0.04),
        ] {
            let mut q = vec![0u8; dtype.bytes_for(x.len() as u64).unwrap() as usize];
            quantize_row(dtype, &x, &mut q).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize_row(dtype, &q, &mut y).unwrap();
            let mse: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / x.len() as f64;
            assert!(mse.sqrt() < bound, "{dtype}: rmse {} ≥ {bound}", mse.sqrt());
        }
    }

    #[test]
    fn zeros_stay_zero() {
        for dtype in [
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
            DType::Q8_K,
        ] {
            let x = vec![0f32; 256];
            let mut q = vec![0u8; dtype.bytes_for(256).unwrap() as usize];
            quantize_row(dtype, &x, &mut q).unwrap();
            let mut y = vec![1f32; 256];
            dequantize_row(dtype, &q, &mut y).unwrap();
            assert!(y.iter().all(|v| *v == 0.0), "{dtype}");
        }
    }
}
