//! aarch64 Advanced SIMD (NEON) dot-product kernels: F32, Q8_0 and Q4_0, the sparse 4-of-8
//! types and the unstructured sparse layout, with baseline NEON only (`vmull_s8` + pairwise
//! accumulate, `tbl` gathers; no dotprod extension needed). Other types take the scalar path.
//! Tested against the scalar twins by `tests/simd_vs_scalar.rs` on aarch64.

use std::arch::aarch64::*;

use super::rows::{Rows, RowsFn};
use crate::act::{ActRef, Q8Row};
use crate::blocks::*;

/// The row kernels each weight type has on aarch64 (baseline NEON), for the type table
/// (`crate::types`): `None` where there are none (the scalar path).
pub mod kernels {
    use super::*;

    pub const F32: Option<RowsFn> = Some(f32_rows);
    pub const F16: Option<RowsFn> = None;
    pub const BF16: Option<RowsFn> = None;
    pub const Q8_0: Option<RowsFn> = Some(q8_0_rows);
    pub const Q4_0: Option<RowsFn> = Some(q4_0_rows);
    pub const Q4_1: Option<RowsFn> = None;
    pub const Q5_0: Option<RowsFn> = None;
    pub const Q5_1: Option<RowsFn> = None;
    pub const Q2_K: Option<RowsFn> = None;
    pub const Q3_K: Option<RowsFn> = None;
    pub const Q4_K: Option<RowsFn> = None;
    pub const Q5_K: Option<RowsFn> = None;
    pub const Q6_K: Option<RowsFn> = None;
    pub const Q8_K: Option<RowsFn> = None;
    pub const Q8_0_48: Option<RowsFn> = Some(sparse_rows::<BlockQ8_0S>);
    pub const Q4_0_48: Option<RowsFn> = Some(sparse_rows::<BlockQ4_0S>);
    pub const Q8_0_24: Option<RowsFn> = Some(sparse_rows::<BlockQ8_0P>);
    pub const Q4_0_24: Option<RowsFn> = Some(sparse_rows::<BlockQ4_0P>);
    pub const Q8_0_U: Option<RowsFn> = Some(pooled_rows);
}

/// Every row against every activation row with `dot` (NEON is part of the aarch64
/// baseline); `false` when an activation is in another form.
fn each_row(r: &mut Rows<'_, '_>, dot: impl Fn(&[u8], &ActRef<'_>) -> Option<f32>) -> bool {
    let (nt, rb) = (r.nt(), r.row_bytes);
    for i in r.first_row..r.n_rows {
        let wr = &r.w[i * rb..(i + 1) * rb];
        for (t, a) in r.acts.iter().enumerate() {
            let Some(v) = dot(wr, a) else {
                return false;
            };
            r.out[i * nt + t] = v;
        }
    }
    true
}

fn f32_rows(r: &mut Rows<'_, '_>) -> bool {
    each_row(r, |wr, a| match a {
        // SAFETY: NEON is part of the aarch64 baseline; `Rows::check` checked the lengths.
        ActRef::F32(x) => Some(unsafe { f32_dot(wr, x) }),
        _ => None,
    })
}

fn q8_0_rows(r: &mut Rows<'_, '_>) -> bool {
    each_row(r, |wr, a| match a {
        // SAFETY: as above; the row is whole Q8_0 blocks and the activation holds as many
        // quants and scales.
        ActRef::Q8(q) => Some(unsafe { q8_0_dot(as_blocks(wr).unwrap_or(&[]), q) }),
        _ => None,
    })
}

fn q4_0_rows(r: &mut Rows<'_, '_>) -> bool {
    each_row(r, |wr, a| match a {
        // SAFETY: as above, with Q4_0 blocks.
        ActRef::Q8(q) => Some(unsafe { q4_0_dot(as_blocks(wr).unwrap_or(&[]), q) }),
        _ => None,
    })
}

fn sparse_rows<B: Sparse>(r: &mut Rows<'_, '_>) -> bool {
    each_row(r, |wr, a| match a {
        // SAFETY: as above, with whole sparse super-blocks.
        ActRef::Q8(q) => Some(unsafe { sparse_dot::<B>(as_blocks(wr).unwrap_or(&[]), q) }),
        _ => None,
    })
}

/// The unstructured layout (`crate::pool`), row by row.
fn pooled_rows(r: &mut Rows<'_, '_>) -> bool {
    let n = r.n;
    each_row(r, |wr, a| match a {
        // SAFETY: as above; the row holds n weights' heads and its pool, the activation as
        // many quants and scales.
        ActRef::Q8(q) => Some(unsafe { pooled_dot(wr, n, q) }),
        _ => None,
    })
}

/// An unstructured row (`crate::pool`) · a Q8 activation: per block of 32, each group of
/// eight weights takes its values from the pool (eight bytes from where the previous group's
/// ended) by one `tbl` (controls by mask byte, `pool::EXPAND8`), zeros elsewhere; then as
/// Q8_0's block.
unsafe fn pooled_dot(w: &[u8], n: usize, a: &Q8Row) -> f32 {
    let Some((heads, pool)) = crate::pool::split(w, n) else {
        return f32::NAN;
    };
    let mut acc = vdupq_n_f32(0.0);
    let mut k = 0usize;
    for b in 0..n / QK {
        let m = crate::pool::block_mask(heads, b);
        let g: [uint8x8_t; 4] = std::array::from_fn(|c| {
            let mb = (m >> (8 * c)) as usize & 0xFF;
            let src = crate::pool::eight(pool, k);
            k += mb.count_ones() as usize;
            // SAFETY: register-only NEON (an index ≥ 8, 0x80, gives 0).
            unsafe { vtbl1_u8(vcreate_u8(src), vcreate_u8(crate::pool::EXPAND8[mb])) }
        });
        let d = half::f16::from_bits(crate::pool::scale_bits(heads, b)).to_f32();
        // SAFETY: 32 activation quants per block; register-only arithmetic after.
        unsafe {
            let w0 = vreinterpretq_s8_u8(vcombine_u8(g[0], g[1]));
            let w1 = vreinterpretq_s8_u8(vcombine_u8(g[2], g[3]));
            let a0 = vld1q_s8(a.qs.as_ptr().add(b * QK));
            let a1 = vld1q_s8(a.qs.as_ptr().add(b * QK + 16));
            let p = vaddq_s32(dot16(w0, a0), dot16(w1, a1));
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), d * a.d[b]);
        }
    }
    // SAFETY: register-only.
    unsafe { vaddvq_f32(acc) }
}

/// The kept positions (0..8) of a 4-of-8 group under mask byte m, as the four bytes of a
/// u32 (the lowest first); 0xFF past the set bits of a byte with fewer than four (`tbl`
/// reads 0 there), the first four of one with more: a malformed block stays in bounds.
const fn positions_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut m = 0;
    while m < 256 {
        let mut v = 0xFFFF_FFFFu32;
        let mut k = 0;
        let mut i = 0;
        while i < 8 {
            if (m >> i) & 1 == 1 && k < 4 {
                v = (v & !(0xFF << (8 * k))) | ((i as u32) << (8 * k));
                k += 1;
            }
            i += 1;
        }
        t[m] = v;
        m += 1;
    }
    t
}
static POSITIONS: [u32; 256] = positions_table();

/// Block s's 16 kept values as signed bytes q.
unsafe fn kept<B: Sparse>(blk: &B, s: usize) -> int8x16_t {
    let v = blk.values().as_ptr();
    // SAFETY: Q4_0: blocks 0, 1 are the low nibbles of bytes 0..16, 16..32 of the 32, blocks
    // 2, 3 their high nibbles; Q8_0: 16 values per block of the 64. Register-only after.
    unsafe {
        if B::Q4 {
            let raw = vld1q_u8(v.add(16 * (s % 2)));
            let u = if s < 2 {
                vandq_u8(raw, vdupq_n_u8(0x0F))
            } else {
                vshrq_n_u8(raw, 4)
            };
            vsubq_s8(vreinterpretq_s8_u8(u), vdupq_n_s8(8))
        } else {
            vld1q_s8(v.add(16 * s) as *const i8)
        }
    }
}

/// Sparse rows ([`Sparse`]): per block of 32 the 16 activations at the kept positions gathered
/// by one two-register `tbl` (indices from [`POSITIONS`] by mask byte), then as Q8_0's 16.
unsafe fn sparse_dot<B: Sparse>(w: &[B], a: &Q8Row) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (sb, wb) in w.iter().enumerate() {
        let masks = wb.masks();
        let m: [u8; 16] = std::array::from_fn(|i| (masks[i / 4] >> (8 * (i % 4))) as u8);
        for s in 0..SPARSE_SUB {
            let b = SPARSE_SUB * sb + s;
            // Group c's positions (0..8) with 8c or'ed in (0xFF stays out of the table: a 0).
            let pos =
                |c: usize| (POSITIONS[m[4 * s + c] as usize] | (0x0808_0808 * c as u32)) as u64;
            let (lo, hi) = (pos(0) | pos(1) << 32, pos(2) | pos(3) << 32);
            // SAFETY: 32 activation quants per block; register-only arithmetic after.
            unsafe {
                let idx = vcombine_u8(vcreate_u8(lo), vcreate_u8(hi));
                let t = int8x16x2_t(
                    vld1q_s8(a.qs.as_ptr().add(b * QK)),
                    vld1q_s8(a.qs.as_ptr().add(b * QK + 16)),
                );
                let x = vqtbl2q_s8(t, idx);
                let p = dot16(kept(wb, s), x);
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), wb.scale(s) * a.d[b]);
            }
        }
    }
    // SAFETY: register-only.
    unsafe { vaddvq_f32(acc) }
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
