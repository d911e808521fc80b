//! One table per weight type, as ggml's `type_traits`: everything tuili does with a type, in
//! one row ([`TypeTraits`]) — its block geometry (the `DType`'s), how a row dequantizes and
//! quantizes (the scalar references), the activation form its dot products take, the scalar
//! dot product, the SIMD row kernels of this machine's instruction-set family, which
//! token-lane matrix kernels it has from which instruction set, and what llama.cpp's
//! quantizer falls back to where its rows are not whole super-blocks.
//!
//! The rest of tuili asks this table instead of matching on the type: the entry points
//! [`dequantize_row`], [`quantize_row`], [`act_kind`] and `dot::dot_rows` look a type up here,
//! and a type without a row cannot be run (`traits` is `None`). Adding a type is one row here
//! plus its kernels: its `DType` (`tuili-core`, with its block geometry), its dequantizer
//! (`dequant`), quantizer (`quant`/`kquant`), scalar dot (`dot::scalar`), and where it has
//! them its SIMD row kernels (one constant in `dot::x86::kernels` / `dot::neon::kernels`) and
//! token-lane matrix kernels (`gemm`, which reads the `gemm` column below).

use tuili_core::DType;

use crate::act::ActKind;
use crate::cpu::Isa;
use crate::dot::rows::RowsFn;
use crate::dot::scalar::{self, DotFn};
use crate::{dequant, kquant, pool, quant, KernelError};

/// A type's SIMD row kernels on this machine's instruction-set family (`dot::x86::kernels`,
/// `dot::neon::kernels`); none elsewhere (the scalar path).
#[cfg(target_arch = "x86_64")]
macro_rules! simd {
    ($t:ident) => {
        crate::dot::x86::kernels::$t
    };
}
#[cfg(target_arch = "aarch64")]
macro_rules! simd {
    ($t:ident) => {
        crate::dot::neon::kernels::$t
    };
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
macro_rules! simd {
    ($t:ident) => {
        None
    };
}

/// Whole rows of bytes → f32.
pub type DequantizeFn = fn(&[u8], &mut [f32]);
/// f32 → whole rows of bytes.
pub type QuantizeFn = fn(&[f32], &mut [u8]);

/// What tuili does with one weight type.
pub struct TypeTraits {
    pub dtype: DType,
    /// Stored as floats (F32, F16, BF16), not as blocks of integers with scales.
    pub float: bool,
    /// Whole rows of bytes → f32 (ggml's `dequantize_row_*`): the reference.
    pub dequantize: DequantizeFn,
    /// f32 → whole rows of bytes (ggml's `quantize_row_*_ref`, byte for byte).
    pub quantize: Option<QuantizeFn>,
    /// The activation form its dot products take (ggml's `vec_dot_type`).
    pub act: ActKind,
    /// Σ w·x of one row and one activation row: the scalar reference of every SIMD kernel.
    pub dot: DotFn,
    /// SIMD row kernels of this machine's instruction-set family (x86_64: AVX2 and up;
    /// aarch64: NEON), each choosing by the instruction set it is given.
    pub simd: Option<RowsFn>,
    /// The lowest instruction set with a token-lane integer matrix kernel (`gemm::gemm_rows`,
    /// batches of prompt tokens), if any. Q8_0 needs VNNI: its unsigned bytes (up to 255)
    /// would saturate AVX2's 16-bit pair sums; the others' (up to 63) cannot.
    pub gemm: Option<Isa>,
    /// The lowest instruction set with a token-lane float matrix kernel (`gemm::gemm_rows_f`).
    pub gemm_f: Option<Isa>,
    /// What llama.cpp's quantizer writes instead of this type for a tensor whose rows are not
    /// whole 256-value super-blocks (`llama_tensor_get_type`'s fallback).
    pub fallback: Option<DType>,
}

/// The rows: every type tuili runs.
#[rustfmt::skip]
static TABLE: [TypeTraits; 33] = [
    TypeTraits { dtype: DType::F32, float: true, dequantize: dequant::f32_row, quantize: Some(quant::f32_row), act: ActKind::F32, dot: scalar::f32_dot, simd: simd!(F32), gemm: None, gemm_f: Some(Isa::Avx2), fallback: None },
    TypeTraits { dtype: DType::F16, float: true, dequantize: dequant::f16_row, quantize: Some(quant::f16_row), act: ActKind::F16, dot: scalar::f16_dot, simd: simd!(F16), gemm: None, gemm_f: Some(Isa::Avx2), fallback: None },
    TypeTraits { dtype: DType::BF16, float: true, dequantize: dequant::bf16_row, quantize: Some(quant::bf16_row), act: ActKind::F32, dot: scalar::bf16_dot, simd: simd!(BF16), gemm: None, gemm_f: Some(Isa::Avx2), fallback: None },
    TypeTraits { dtype: DType::Q8_0, float: false, dequantize: dequant::q8_0_row, quantize: Some(quant::q8_0_row), act: ActKind::Q8, dot: scalar::q8_0_dot, simd: simd!(Q8_0), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_48, float: false, dequantize: dequant::q8_0_48_row, quantize: Some(quant::q8_0_48_row), act: ActKind::Q8, dot: scalar::q8_0_48_dot, simd: simd!(Q8_0_48), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_24, float: false, dequantize: dequant::q8_0_24_row, quantize: Some(quant::q8_0_24_row), act: ActKind::Q8, dot: scalar::q8_0_24_dot, simd: simd!(Q8_0_24), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U8, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<8>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U16, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<16>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U24, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<24>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U32, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<32>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U40, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<40>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U48, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<48>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U56, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<56>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U64, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<64>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U72, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<72>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U80, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<80>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U88, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<88>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U96, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<96>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U104, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<104>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U112, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<112>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q8_0_U120, float: false, dequantize: pool::dequantize_row, quantize: Some(pool::quantize_row), act: ActKind::Q8, dot: scalar::q8_0_pooled_dot::<120>, simd: simd!(Q8_0_U), gemm: Some(Isa::Avx512Vnni), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q4_0, float: false, dequantize: dequant::q4_0_row, quantize: Some(quant::q4_0_row), act: ActKind::Q8, dot: scalar::q4_0_dot, simd: simd!(Q4_0), gemm: Some(Isa::Avx2), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q4_0_48, float: false, dequantize: dequant::q4_0_48_row, quantize: Some(quant::q4_0_48_row), act: ActKind::Q8, dot: scalar::q4_0_48_dot, simd: simd!(Q4_0_48), gemm: Some(Isa::Avx2), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q4_0_24, float: false, dequantize: dequant::q4_0_24_row, quantize: Some(quant::q4_0_24_row), act: ActKind::Q8, dot: scalar::q4_0_24_dot, simd: simd!(Q4_0_24), gemm: Some(Isa::Avx2), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q4_1, float: false, dequantize: dequant::q4_1_row, quantize: Some(quant::q4_1_row), act: ActKind::Q8, dot: scalar::q4_1_dot, simd: simd!(Q4_1), gemm: Some(Isa::Avx2), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q5_0, float: false, dequantize: dequant::q5_0_row, quantize: Some(quant::q5_0_row), act: ActKind::Q8, dot: scalar::q5_0_dot, simd: simd!(Q5_0), gemm: Some(Isa::Avx2), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q5_1, float: false, dequantize: dequant::q5_1_row, quantize: Some(quant::q5_1_row), act: ActKind::Q8, dot: scalar::q5_1_dot, simd: simd!(Q5_1), gemm: Some(Isa::Avx2), gemm_f: None, fallback: None },
    TypeTraits { dtype: DType::Q2_K, float: false, dequantize: dequant::q2_k_row, quantize: Some(kquant::q2_k_row), act: ActKind::Q8K, dot: scalar::q2_k_dot, simd: simd!(Q2_K), gemm: Some(Isa::Avx2), gemm_f: None, fallback: Some(DType::Q4_0) },
    TypeTraits { dtype: DType::Q3_K, float: false, dequantize: dequant::q3_k_row, quantize: Some(kquant::q3_k_row), act: ActKind::Q8K, dot: scalar::q3_k_dot, simd: simd!(Q3_K), gemm: Some(Isa::Avx2), gemm_f: None, fallback: Some(DType::Q4_0) },
    TypeTraits { dtype: DType::Q4_K, float: false, dequantize: dequant::q4_k_row, quantize: Some(kquant::q4_k_row), act: ActKind::Q8K, dot: scalar::q4_k_dot, simd: simd!(Q4_K), gemm: Some(Isa::Avx2), gemm_f: None, fallback: Some(DType::Q5_0) },
    TypeTraits { dtype: DType::Q5_K, float: false, dequantize: dequant::q5_k_row, quantize: Some(kquant::q5_k_row), act: ActKind::Q8K, dot: scalar::q5_k_dot, simd: simd!(Q5_K), gemm: Some(Isa::Avx2), gemm_f: None, fallback: Some(DType::Q5_1) },
    TypeTraits { dtype: DType::Q6_K, float: false, dequantize: dequant::q6_k_row, quantize: Some(kquant::q6_k_row), act: ActKind::Q8K, dot: scalar::q6_k_dot, simd: simd!(Q6_K), gemm: Some(Isa::Avx2), gemm_f: None, fallback: Some(DType::Q8_0) },
    TypeTraits { dtype: DType::Q8_K, float: false, dequantize: dequant::q8_k_row, quantize: Some(quant::q8_k_row), act: ActKind::F32, dot: scalar::q8_k_dot, simd: simd!(Q8_K), gemm: None, gemm_f: None, fallback: None },
];

/// The row of `dtype`, or `None` when tuili cannot run it.
pub fn traits(dtype: DType) -> Option<&'static TypeTraits> {
    TABLE.iter().find(|t| t.dtype == dtype)
}

/// Every type tuili runs, in the table's order.
pub fn runnable() -> impl Iterator<Item = DType> {
    TABLE.iter().map(|t| t.dtype)
}

/// Dequantizes `dst.len()` elements of type `dtype` from `src` (exactly their bytes).
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    let t = traits(dtype).ok_or(KernelError::Unsupported { dtype })?;
    crate::check_row(dtype, dst.len(), src.len())?;
    (t.dequantize)(src, dst);
    Ok(())
}

/// Quantizes `src` into `dst` (exactly the bytes `dtype` needs for `src.len()` elements).
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    crate::check_row(dtype, src.len(), dst.len())?;
    let q = traits(dtype)
        .and_then(|t| t.quantize)
        .ok_or(KernelError::NoQuantizer { dtype })?;
    q(src, dst);
    Ok(())
}

/// The first malformed block of `bytes` (whole rows of `row_bytes`, whole blocks of
/// `dtype`), if any: a sparse 4-of-8 super-block whose keep-mask has a byte without exactly
/// four bits set, a 2:4 one with a group code of none or all of b0 b1 b2 (not two kept), or an
/// unstructured row's super-block whose kept values run past the row's pool (`pool`) — the
/// kernels would read other blocks' values. Dense types have no such constraint.
pub fn malformed_block(dtype: DType, bytes: &[u8], row_bytes: usize) -> Option<usize> {
    dtype.dense_twin()?;
    let bb = dtype.block_bytes() as usize;
    if dtype.pool_room().is_some() {
        let n = row_bytes / bb * dtype.block_len() as usize;
        let per_row = row_bytes / bb;
        return bytes
            .chunks(row_bytes.max(1))
            .enumerate()
            .find_map(|(r, row)| pool::overflow(row, n).map(|sb| r * per_row + sb));
    }
    let codes = matches!(dtype, DType::Q8_0_24 | DType::Q4_0_24);
    bytes.chunks_exact(bb).position(|b| {
        if codes {
            // b0 + b1 + b2 must be 1 or 2 in every group: a code of neither 0 nor 7.
            let x = u128::from_le_bytes(std::array::from_fn(|i| if i < 12 { b[i] } else { 0 }));
            (0..32).any(|g| matches!(x >> (3 * g) & 7, 0 | 7))
        } else {
            b[..16].iter().any(|m| m.count_ones() != 4)
        }
    })
}

/// Which activation form `dtype` weights use (f32 for a type tuili cannot run: its dot
/// products then dequantize).
pub fn act_kind(dtype: DType) -> ActKind {
    traits(dtype).map_or(ActKind::F32, |t| t.act)
}

/// Whether `dtype` has a token-lane integer matrix kernel with `isa`.
pub fn has_gemm(isa: Isa, dtype: DType) -> bool {
    cfg!(target_arch = "x86_64") && traits(dtype).and_then(|t| t.gemm).is_some_and(|m| isa >= m)
}

/// Whether `dtype` has a token-lane float matrix kernel with `isa`.
pub fn has_gemm_f(isa: Isa, dtype: DType) -> bool {
    cfg!(target_arch = "x86_64")
        && traits(dtype)
            .and_then(|t| t.gemm_f)
            .is_some_and(|m| isa >= m)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            DType::Q8_0_48,
            DType::Q4_0,
            DType::Q4_0_48,
            DType::Q8_0_24,
            DType::Q4_0_24,
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

    /// The 4-of-8 layouts keep exactly what their base type gives a row already pruned 2:4
    /// or 4:8, and prune any other row by magnitude to 4 of 8.
    #[test]
    fn sparse_layouts_are_their_base_type_of_a_pruned_row() {
        let dequant = |t: DType, x: &[f32]| {
            let mut q = vec![0u8; t.bytes_for(x.len() as u64).unwrap() as usize];
            quantize_row(t, x, &mut q).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize_row(t, &q, &mut y).unwrap();
            y
        };
        for (sparse, base, m) in [
            (DType::Q8_0_48, DType::Q8_0, 4),
            (DType::Q8_0_48, DType::Q8_0, 8),
            (DType::Q4_0_48, DType::Q4_0, 4),
            (DType::Q4_0_48, DType::Q4_0, 8),
            (DType::Q8_0_24, DType::Q8_0, 4),
            (DType::Q4_0_24, DType::Q4_0, 4),
        ] {
            let mut x = data(4096, 11);
            for g in x.chunks_exact_mut(m) {
                // Keep the larger half of each group (the lower position among equals).
                let mut o: Vec<usize> = (0..m).collect();
                o.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()).then(a.cmp(&b)));
                for &p in &o[m / 2..] {
                    g[p] = 0.0;
                }
            }
            assert_eq!(dequant(sparse, &x), dequant(base, &x), "{sparse} {m}");
            let dense = data(4096, 12);
            let y = dequant(sparse, &dense);
            // The 2:4 layouts keep two of every four, the others four of every eight.
            let group = if matches!(sparse, DType::Q8_0_24 | DType::Q4_0_24) {
                4
            } else {
                8
            };
            for (g, d) in y.chunks_exact(group).zip(dense.chunks_exact(group)) {
                assert!(g.iter().filter(|v| **v != 0.0).count() <= group / 2);
                // What is kept is the larger half.
                let kept_min = g
                    .iter()
                    .zip(d)
                    .filter(|(v, _)| **v != 0.0)
                    .map(|(_, w)| w.abs())
                    .fold(f32::MAX, f32::min);
                let lost_max = g
                    .iter()
                    .zip(d)
                    .filter(|(v, _)| **v == 0.0)
                    .map(|(_, w)| w.abs())
                    .fold(0f32, f32::max);
                assert!(kept_min >= lost_max, "{d:?} → {g:?}");
            }
        }
        // Bytes per weight: 11/16 of Q8_0's 17/16, 7/16 of Q4_0's 9/16.
        assert_eq!(DType::Q8_0_48.bytes_for(4096).unwrap(), 4096 * 11 / 16);
        assert_eq!(DType::Q4_0_48.bytes_for(4096).unwrap(), 4096 * 7 / 16);
        // 2:4: 3 bits of positions a group of four instead of 4.
        assert_eq!(DType::Q8_0_24.bytes_for(4096).unwrap(), 4096 * 21 / 32);
        assert_eq!(DType::Q4_0_24.bytes_for(4096).unwrap(), 4096 * 13 / 32);
    }

    #[test]
    fn rejects_wrong_sizes() {
        let mut out = [0f32; 32];
        assert!(matches!(
            dequantize_row(DType::Q4_0, &[0u8; 17], &mut out),
            Err(KernelError::SizeMismatch { .. })
        ));
        let mut out = [0f32; 33];
        assert!(matches!(
            dequantize_row(DType::Q4_0, &[0u8; 18], &mut out),
            Err(KernelError::NotBlockMultiple { .. })
        ));
        assert!(matches!(
            dequantize_row(DType::IQ2_XXS, &[], &mut []),
            Err(KernelError::Unsupported { .. })
        ));
    }

    #[test]
    fn one_row_per_runnable_type() {
        for t in DType::ALL {
            assert!(TABLE.iter().filter(|r| r.dtype == t).count() <= 1, "{t}");
        }
        // Float types are those of block length 1, and take f32 or f16 activations.
        for r in &TABLE {
            assert_eq!(r.float, r.dtype.block_len() == 1, "{}", r.dtype);
            assert!(!r.float || matches!(r.act, ActKind::F32 | ActKind::F16));
        }
        // A fallback has a block that divides more row lengths.
        for r in &TABLE {
            if let Some(f) = r.fallback {
                assert!(f.block_len() < r.dtype.block_len() && traits(f).is_some());
            }
        }
    }
}
