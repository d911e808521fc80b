//! `tuili-kernels`: pure functions over slices.
//!
//! Owns: the byte layout of every GGML quant block ([`blocks`]), the table of what tuili does
//! with each weight type ([`types`]: the one place that decides per type), dequantization to
//! f32 and the reference quantizers ([`dequant`], [`quant`]; the unstructured sparse layout's
//! in [`pool`]), activation quantization ([`act`]),
//! the dot products ([`dot`]) and matrix kernels ([`gemm`]) with their run-time
//! instruction-set choice ([`cpu`]), attention over cached rows ([`attn`]), and the float
//! operations of a Transformer layer ([`ops`]).
//!
//! May not: allocate (a few grow-only activation buffers aside, owned by the caller's
//! structures), do I/O, or start threads — callers hand in every buffer, and parallelism belongs
//! to the caller. Every SIMD kernel has a scalar twin beside it, and the tests compare them.

// The kernels index arrays as the ggml formulas they mirror do; iterator chains would hide
// the correspondence that the tests and reviewers check.
#![allow(clippy::needless_range_loop)]

pub mod act;
pub mod attn;
pub mod blocks;
pub mod cpu;
pub mod dequant;
pub mod dot;
pub mod gemm;
mod kquant;
pub mod ops;
pub mod pool;
pub mod quant;
pub mod types;

use tuili_core::DType;

/// Errors of the kernels: always a caller handing in slices of the wrong size or type.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KernelError {
    #[error("{dtype}: {n_elements} output elements need {expected} input bytes, got {got}")]
    SizeMismatch {
        dtype: DType,
        n_elements: usize,
        expected: usize,
        got: usize,
    },
    #[error("{dtype}: {n_elements} elements is not a multiple of the block length {block_len}")]
    NotBlockMultiple {
        dtype: DType,
        n_elements: usize,
        block_len: usize,
    },
    #[error("tensor type {dtype} cannot be dequantized by tuili")]
    Unsupported { dtype: DType },
    #[error("tensor type {dtype} has no quantizer in tuili")]
    NoQuantizer { dtype: DType },
}

/// Checks that `n_bytes` hold exactly `n_elements` of `dtype` (whole blocks).
pub fn check_row(dtype: DType, n_elements: usize, n_bytes: usize) -> Result<(), KernelError> {
    let bl = dtype.block_len() as usize;
    if !n_elements.is_multiple_of(bl) {
        return Err(KernelError::NotBlockMultiple {
            dtype,
            n_elements,
            block_len: bl,
        });
    }
    let expected = n_elements / bl * dtype.block_bytes() as usize;
    if n_bytes != expected {
        return Err(KernelError::SizeMismatch {
            dtype,
            n_elements,
            expected,
            got: n_bytes,
        });
    }
    Ok(())
}
