//! aarch64 Advanced SIMD (NEON) dot-product kernels: F32, Q8_0 and Q4_0 with baseline NEON
//! only (`vmull_s8` + pairwise accumulate; no dotprod extension needed). Other types take the
//! scalar path. Tested against the scalar twins by `tests/simd_vs_scalar.rs` on aarch64.

use std::arch::aarch64::*;

use super::ActRef;
use crate::act::Q8Row;
use crate::blocks::*;
use tuili_core::DType;

/// Several consecutive weight rows against the same activation rows (`out[r·nt + t]`);
/// `false` means "use the scalar path".
pub fn dot_rows(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    acts: &[ActRef<'_>],
    out: &mut [f32],
) -> bool {
    let nt = acts.len();
    let Some((n_rows, n)) = super::row_geometry(dtype, w, row_bytes, nt, out.len()) else {
        return false;
    };
    for r in 0..n_rows {
        let wr = &w[r * row_bytes..(r + 1) * row_bytes];
        for (t, a) in acts.iter().enumerate() {
            let v = match (dtype, a) {
                (DType::F32, ActRef::F32(x)) if x.len() == n => {
                    // SAFETY: NEON is part of the aarch64 baseline; lengths checked above.
                    unsafe { f32_dot(wr, x) }
                }
                (DType::Q8_0, ActRef::Q8(q)) if q.qs.len() >= n && q.d.len() * QK >= n => {
                    // SAFETY: as above.
                    unsafe { q8_0_dot(as_blocks(wr).unwrap_or(&[]), q) }
                }
                (DType::Q4_0, ActRef::Q8(q)) if q.qs.len() >= n && q.d.len() * QK >= n => {
                    // SAFETY: as above.
                    unsafe { q4_0_dot(as_blocks(wr).unwrap_or(&[]), q) }
                }
                _ => return false,
            };
            out[r * nt + t] = v;
        }
    }
    true
}

/// Σ w·x with four f32x4 accumulators.
unsafe fn f32_dot(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let wp = w.as_ptr() as *const f32;
    let xp = x.as_ptr();
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for k in 0..4 {
            // SAFETY: i + 16 ≤ n; the weight row holds n f32 (possibly unaligned: vld1q
            // accepts any alignment).
            unsafe {
                acc[k] = vfmaq_f32(
                    acc[k],
                    vld1q_f32(wp.add(i + 4 * k)),
                    vld1q_f32(xp.add(i + 4 * k)),
                );
            }
        }
        i += 16;
    }
    let mut s = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    for j in i..n {
        let c = &w[j * 4..j * 4 + 4];
        s += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * x[j];
    }
    s
}

/// Σ of 16 int8 products, widened: vmull_s8 on both halves, pairwise-added into i32.
#[inline]
unsafe fn dot16(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: register-only NEON arithmetic.
    unsafe {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_s8(vget_high_s8(a), vget_high_s8(b));
        vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
    }
}

unsafe fn q8_0_dot(w: &[BlockQ8_0], a: &Q8Row) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (b, wb) in w.iter().enumerate() {
        // SAFETY: 32 quants per block in both rows.
        unsafe {
            let w0 = vld1q_s8(wb.qs.as_ptr() as *const i8);
            let w1 = vld1q_s8(wb.qs.as_ptr().add(16) as *const i8);
            let a0 = vld1q_s8(a.qs.as_ptr().add(b * QK));
            let a1 = vld1q_s8(a.qs.as_ptr().add(b * QK + 16));
            let p = vaddq_s32(dot16(w0, a0), dot16(w1, a1));
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), f16_le(wb.d) * a.d[b]);
        }
    }
    // SAFETY: register-only.
    unsafe { vaddvq_f32(acc) }
}

unsafe fn q4_0_dot(w: &[BlockQ4_0], a: &Q8Row) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (b, wb) in w.iter().enumerate() {
        // SAFETY: 16 bytes of nibbles per block; 32 activation quants per block.
        unsafe {
            let raw = vld1q_u8(wb.qs.as_ptr());
            let eight = vdupq_n_s8(8);
            // Low nibbles are elements 0..16, high nibbles 16..32; both minus 8.
            let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0F))), eight);
            let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(raw, 4)), eight);
            let a0 = vld1q_s8(a.qs.as_ptr().add(b * QK));
            let a1 = vld1q_s8(a.qs.as_ptr().add(b * QK + 16));
            let p = vaddq_s32(dot16(lo, a0), dot16(hi, a1));
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), f16_le(wb.d) * a.d[b]);
        }
    }
    // SAFETY: register-only.
    unsafe { vaddvq_f32(acc) }
}
