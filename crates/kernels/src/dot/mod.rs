//! Dot products of one weight row (in its stored type) with prepared activation rows — the
//! inner loop of every matrix product. `scalar` holds the reference twins; `x86` the AVX2 and
//! AVX-512 VNNI versions, chosen at run time through [`crate::cpu::Isa`].

#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use crate::act::{Q8KRow, Q8Row};
use crate::cpu::Isa;
use half::f16;
use tuili_core::DType;

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

/// Which activation form `dtype` weights use.
pub fn act_kind(dtype: DType) -> ActKind {
    match dtype {
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => ActKind::Q8,
        DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => ActKind::Q8K,
        DType::F16 => ActKind::F16,
        _ => ActKind::F32,
    }
}

/// One prepared activation row.
#[derive(Debug, Clone, Copy)]
pub enum ActRef<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Q8(&'a Q8Row),
    Q8K(&'a Q8KRow),
}

/// Σ w·xₜ for several activation rows at once (the weight row is unpacked once per block and
/// used for every row: the matrix-matrix case).
pub fn dot_many(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    acts: &[ActRef<'_>],
    out: &mut [f32],
    tmp: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 && x86::dot_many(isa, dtype, w, acts, out) {
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon && neon::dot_rows(dtype, w, w.len(), acts, out) {
        return;
    }
    let _ = isa;
    scalar::dot_many(dtype, w, acts, out, tmp)
}

/// Several consecutive weight rows (`row_bytes` each) against the same activation rows:
/// `out[r · acts.len() + t]`. The SIMD dispatch and checks happen once for the whole group.
pub fn dot_rows(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    acts: &[ActRef<'_>],
    out: &mut [f32],
    tmp: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 && x86::dot_rows(isa, dtype, w, row_bytes, acts, out) {
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon && neon::dot_rows(dtype, w, row_bytes, acts, out) {
        return;
    }
    let nt = acts.len();
    if row_bytes == 0 {
        return;
    }
    for (r, wr) in w.chunks_exact(row_bytes).enumerate() {
        scalar::dot_many(dtype, wr, acts, &mut out[r * nt..(r + 1) * nt], tmp);
    }
}

/// The shape of a group of weight rows: `(n_rows, elements per row)`, or `None` when the bytes
/// are not whole rows of whole blocks or `out` cannot hold `n_rows × nt` results. The SIMD
/// paths check this once per group before reading anything.
pub(crate) fn row_geometry(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    nt: usize,
    out_len: usize,
) -> Option<(usize, usize)> {
    let bl = dtype.block_len() as usize;
    let bb = dtype.block_bytes() as usize;
    if row_bytes == 0 || !row_bytes.is_multiple_of(bb) || !w.len().is_multiple_of(row_bytes) {
        return None;
    }
    let n_rows = w.len() / row_bytes;
    if out_len < n_rows * nt {
        return None;
    }
    Some((n_rows, row_bytes / bb * bl))
}
