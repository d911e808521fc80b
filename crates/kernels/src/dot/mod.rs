//! Dot products of weight rows (in their stored type) with prepared activation rows — the
//! inner loop of every matrix product. `scalar` holds the reference twins; `x86` the AVX2,
//! AVX-512 VNNI and VBMI versions, `neon` aarch64's, chosen at run time through
//! [`crate::cpu::Isa`]; which a type has is its row of the type table (`crate::types`).

#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod rows;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use tuili_core::DType;

use crate::act::ActRef;
use crate::cpu::Isa;
use crate::types;
use rows::Rows;

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
    dot_rows(isa, dtype, w, w.len(), acts, out, tmp)
}

/// Several consecutive weight rows (`row_bytes` each) against the same activation rows:
/// `out[r · acts.len() + t]`. The type's SIMD row kernels (its table row, `crate::types`)
/// when `isa` reaches them and the inputs check out (once for the whole group), else its
/// scalar reference dot, row by row (`NaN` for a type tuili cannot run).
pub fn dot_rows(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    acts: &[ActRef<'_>],
    out: &mut [f32],
    tmp: &mut [f32],
) {
    let Some(t) = types::traits(dtype) else {
        out.fill(f32::NAN);
        return;
    };
    if let Some(simd) = t.simd.filter(|_| isa >= SIMD_ISA) {
        if let Some(mut r) = Rows::check(isa, dtype, w, row_bytes, acts, out) {
            if simd(&mut r) {
                return;
            }
        }
    }
    let nt = acts.len();
    if row_bytes == 0 {
        return;
    }
    for (r, wr) in w.chunks_exact(row_bytes).enumerate() {
        for (o, a) in out[r * nt..(r + 1) * nt].iter_mut().zip(acts) {
            *o = (t.dot)(wr, *a, tmp);
        }
    }
}

/// The least instruction set this machine's SIMD row kernels need.
#[cfg(target_arch = "x86_64")]
const SIMD_ISA: Isa = Isa::Avx2;
#[cfg(target_arch = "aarch64")]
const SIMD_ISA: Isa = Isa::Neon;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SIMD_ISA: Isa = Isa::Avx512Vbmi;
