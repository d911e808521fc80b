//! The paged pool's element type chosen at run time: [`KvType`] (F32, F16 or Q8_0) and a
//! [`PagedStore`] holding a [`PagedKv`] of that type. The one place that switches on the
//! cache's element type: serving, perplexity and the benchmarks hold a `PagedStore`, and a
//! forward pass gets the store's typed batch ([`PagedStoreBatch`]), whose attention loops are
//! compiled for the element type behind it.

use half::f16;
use tuili_kernels::blocks::BlockQ8_0;

use crate::paged::{BlockCopy, PagedBatch, PagedKv};
use crate::KvError;

/// The element type of a paged KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    F32,
    /// Half the bytes of F32 (llama.cpp's default): twice the sequences in the same memory,
    /// and half the cache reads per decode step.
    F16,
    /// llama.cpp's Q8_0 blocks (34 bytes per 32 values): a little over a quarter of F32;
    /// needs a head dimension that is a multiple of 32.
    Q8_0,
}

impl KvType {
    /// `f32`, `f16` or `q8_0` (any case).
    pub fn parse(s: &str) -> Option<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(KvType::F32),
            "f16" => Some(KvType::F16),
            "q8_0" => Some(KvType::Q8_0),
            _ => None,
        }
    }

    /// The name [`KvType::parse`] takes (and llama-bench's `type_k` prints).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// Bytes of one position's keys and values in every layer.
    pub fn bytes_per_position(self, n_layer: usize, kv_dim: usize) -> usize {
        let row = match self {
            KvType::F32 => PagedKv::<f32>::row_bytes(kv_dim),
            KvType::F16 => PagedKv::<f16>::row_bytes(kv_dim),
            KvType::Q8_0 => PagedKv::<BlockQ8_0>::row_bytes(kv_dim),
        };
        2 * n_layer * row
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A paged pool of the element type chosen at run time.
#[derive(Debug)]
pub enum PagedStore {
    F32(PagedKv<f32>),
    F16(PagedKv<f16>),
    Q8_0(PagedKv<BlockQ8_0>),
}

/// Sequences' block tables over a [`PagedStore`] for one forward pass, typed.
pub enum PagedStoreBatch<'a> {
    F32(PagedBatch<'a, f32>),
    F16(PagedBatch<'a, f16>),
    Q8_0(PagedBatch<'a, BlockQ8_0>),
}

impl PagedStore {
    /// A pool of `n_blocks` blocks of `block_size` (a power of two) positions of `kv_type`.
    pub fn new(
        kv_type: KvType,
        n_layer: usize,
        n_blocks: usize,
        block_size: usize,
        n_kv_head: usize,
        head_dim: usize,
    ) -> Result<PagedStore, KvError> {
        let (l, nb, bs, h, d) = (n_layer, n_blocks, block_size, n_kv_head, head_dim);
        Ok(match kv_type {
            KvType::F32 => PagedStore::F32(PagedKv::new(l, nb, bs, h, d)?),
            KvType::F16 => PagedStore::F16(PagedKv::new(l, nb, bs, h, d)?),
            KvType::Q8_0 => PagedStore::Q8_0(PagedKv::new(l, nb, bs, h, d)?),
        })
    }

    pub fn kv_type(&self) -> KvType {
        match self {
            PagedStore::F32(_) => KvType::F32,
            PagedStore::F16(_) => KvType::F16,
            PagedStore::Q8_0(_) => KvType::Q8_0,
        }
    }

    /// Carries out copy-on-write copies (every layer).
    pub fn copy_blocks(&mut self, copies: &[BlockCopy]) {
        match self {
            PagedStore::F32(s) => s.copy_blocks(copies),
            PagedStore::F16(s) => s.copy_blocks(copies),
            PagedStore::Q8_0(s) => s.copy_blocks(copies),
        }
    }

    /// The pool with the block tables of one batch (sequence i's blocks are
    /// `tables[offsets[i]..offsets[i + 1]]`).
    pub fn batch<'a>(&'a mut self, tables: &'a [u32], offsets: &'a [usize]) -> PagedStoreBatch<'a> {
        match self {
            PagedStore::F32(store) => PagedStoreBatch::F32(PagedBatch {
                store,
                tables,
                offsets,
            }),
            PagedStore::F16(store) => PagedStoreBatch::F16(PagedBatch {
                store,
                tables,
                offsets,
            }),
            PagedStore::Q8_0(store) => PagedStoreBatch::Q8_0(PagedBatch {
                store,
                tables,
                offsets,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_size() {
        for t in [KvType::F32, KvType::F16, KvType::Q8_0] {
            assert_eq!(KvType::parse(t.name()), Some(t));
            assert_eq!(KvType::parse(&t.name().to_uppercase()), Some(t));
        }
        assert_eq!(KvType::parse("q4_0"), None);
        // 2 layers × 64 values: f32 4 bytes, f16 2, Q8_0 34 per 32; keys and values.
        assert_eq!(KvType::F32.bytes_per_position(2, 64), 2 * 2 * 256);
        assert_eq!(KvType::F16.bytes_per_position(2, 64), 2 * 2 * 128);
        assert_eq!(KvType::Q8_0.bytes_per_position(2, 64), 2 * 2 * 68);
        let s = PagedStore::new(KvType::Q8_0, 2, 4, 16, 2, 32).unwrap();
        assert_eq!(s.kv_type(), KvType::Q8_0);
        assert!(matches!(
            PagedStore::new(KvType::Q8_0, 2, 4, 16, 2, 8),
            Err(KvError::HeadDim {
                head_dim: 8,
                per: 32
            })
        ));
    }
}
