//! Tensor element types, numbered as GGML numbers them (the numbers are what GGUF stores).

use std::fmt;

/// Errors of the dtype vocabulary.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DTypeError {
    #[error("unknown ggml tensor type id {id}")]
    UnknownId { id: u32 },
    #[error("tensor type {dtype} is not supported by tuili")]
    Unsupported { dtype: DType },
    #[error("{n_elements} elements is not a whole number of {dtype} blocks ({block_len} each)")]
    NotBlockMultiple {
        dtype: DType,
        n_elements: u64,
        block_len: u64,
    },
    #[error("size of {n_elements} elements of {dtype} overflows")]
    Overflow { dtype: DType, n_elements: u64 },
}

/// A GGML tensor element type. Block-quantized types store `block_len()` elements in
/// `block_bytes()` bytes; plain types have a block length of 1.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    /// tuili's own (not ggml's; ids from 1024 on, which llama.cpp refuses; 1024 was an
    /// earlier 2:4 layout, retired): Q8_0 pruned so that every group of 8 weights keeps 4
    /// (2:4 and 4:8 rows) — per 128 weights a keep-mask, four Q8_0 scales and the 64 kept
    /// int8 values (`tuili_kernels::blocks::BlockQ8_0S`).
    Q8_0_48 = 1025,
    /// tuili's own: Q4_0 pruned 4 of every 8 — per 128 weights a keep-mask, four Q4_0 scales
    /// and the 64 kept 4-bit values (`tuili_kernels::blocks::BlockQ4_0S`).
    Q4_0_48 = 1026,
    /// tuili's own: Q8_0 pruned 2:4 — per 128 weights the kept positions as 3-bit codes (one
    /// a group of four), four Q8_0 scales and the 64 kept int8 values
    /// (`tuili_kernels::blocks::BlockQ8_0P`).
    Q8_0_24 = 1027,
    /// tuili's own: Q4_0 pruned 2:4, as `Q8_0_24` with Q4_0's scales and 4-bit values
    /// (`tuili_kernels::blocks::BlockQ4_0P`).
    Q4_0_24 = 1028,
    /// tuili's own: Q8_0 pruned without a pattern (unstructured), a row at a time — per 128
    /// weights a keep-mask and four Q8_0 scales, then the row's kept int8 values in one pool
    /// of room for `U` per 128 on average (`tuili_kernels::pool`). One type per room, in
    /// steps of 8: the number is in the type so that a row's size follows from it, as
    /// GGUF wants.
    Q8_0_U8 = 1101,
    Q8_0_U16 = 1102,
    Q8_0_U24 = 1103,
    Q8_0_U32 = 1104,
    Q8_0_U40 = 1105,
    Q8_0_U48 = 1106,
    Q8_0_U56 = 1107,
    Q8_0_U64 = 1108,
    Q8_0_U72 = 1109,
    Q8_0_U80 = 1110,
    Q8_0_U88 = 1111,
    Q8_0_U96 = 1112,
    Q8_0_U104 = 1113,
    Q8_0_U112 = 1114,
    Q8_0_U120 = 1115,
}

impl DType {
    /// Every type GGUF knows, in id order, then tuili's own.
    pub const ALL: [DType; 50] = [
        DType::F32,
        DType::F16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q8_1,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_K,
        DType::IQ2_XXS,
        DType::IQ2_XS,
        DType::IQ3_XXS,
        DType::IQ1_S,
        DType::IQ4_NL,
        DType::IQ3_S,
        DType::IQ2_S,
        DType::IQ4_XS,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F64,
        DType::IQ1_M,
        DType::BF16,
        DType::TQ1_0,
        DType::TQ2_0,
        DType::Q8_0_48,
        DType::Q4_0_48,
        DType::Q8_0_24,
        DType::Q4_0_24,
        DType::Q8_0_U8,
        DType::Q8_0_U16,
        DType::Q8_0_U24,
        DType::Q8_0_U32,
        DType::Q8_0_U40,
        DType::Q8_0_U48,
        DType::Q8_0_U56,
        DType::Q8_0_U64,
        DType::Q8_0_U72,
        DType::Q8_0_U80,
        DType::Q8_0_U88,
        DType::Q8_0_U96,
        DType::Q8_0_U104,
        DType::Q8_0_U112,
        DType::Q8_0_U120,
    ];

    pub fn from_id(id: u32) -> Result<DType, DTypeError> {
        DType::ALL
            .iter()
            .copied()
            .find(|t| *t as u32 == id)
            .ok_or(DTypeError::UnknownId { id })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// Elements per block.
    pub fn block_len(self) -> u64 {
        use DType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL => 32,
            Q8_0_48 | Q4_0_48 | Q8_0_24 | Q4_0_24 => 128,
            Q8_0_U8 | Q8_0_U16 | Q8_0_U24 | Q8_0_U32 | Q8_0_U40 | Q8_0_U48 | Q8_0_U56
            | Q8_0_U64 | Q8_0_U72 | Q8_0_U80 | Q8_0_U88 | Q8_0_U96 | Q8_0_U104 | Q8_0_U112
            | Q8_0_U120 => 128,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S
            | IQ3_S | IQ2_S | IQ4_XS | IQ1_M | TQ1_0 | TQ2_0 => 256,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> u64 {
        use DType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
            IQ2_XXS => 66,
            IQ2_XS => 74,
            IQ3_XXS => 98,
            IQ1_S => 50,
            IQ4_NL => 18,
            IQ3_S => 110,
            IQ2_S => 82,
            IQ4_XS => 136,
            IQ1_M => 56,
            TQ1_0 => 54,
            TQ2_0 => 66,
            Q8_0_48 => 88,
            Q4_0_48 => 56,
            Q8_0_24 => 84,
            Q4_0_24 => 52,
            // A keep-mask (16 bytes) and four f16 scales a super-block, and its share of the pool.
            Q8_0_U8 | Q8_0_U16 | Q8_0_U24 | Q8_0_U32 | Q8_0_U40 | Q8_0_U48 | Q8_0_U56
            | Q8_0_U64 | Q8_0_U72 | Q8_0_U80 | Q8_0_U88 | Q8_0_U96 | Q8_0_U104 | Q8_0_U112
            | Q8_0_U120 => 24 + self.pool_room().unwrap_or(0),
        }
    }

    /// Bytes taken by `n_elements` elements, checking block alignment and overflow.
    pub fn bytes_for(self, n_elements: u64) -> Result<u64, DTypeError> {
        let bl = self.block_len();
        if !n_elements.is_multiple_of(bl) {
            return Err(DTypeError::NotBlockMultiple {
                dtype: self,
                n_elements,
                block_len: bl,
            });
        }
        (n_elements / bl)
            .checked_mul(self.block_bytes())
            .ok_or(DTypeError::Overflow {
                dtype: self,
                n_elements,
            })
    }

    /// Bits per weight, for display.
    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_len() as f64
    }

    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            Q8_0_48 => "Q8_0_4:8",
            Q4_0_48 => "Q4_0_4:8",
            Q8_0_24 => "Q8_0_2:4",
            Q4_0_24 => "Q4_0_2:4",
            Q8_0_U8 => "Q8_0_U8",
            Q8_0_U16 => "Q8_0_U16",
            Q8_0_U24 => "Q8_0_U24",
            Q8_0_U32 => "Q8_0_U32",
            Q8_0_U40 => "Q8_0_U40",
            Q8_0_U48 => "Q8_0_U48",
            Q8_0_U56 => "Q8_0_U56",
            Q8_0_U64 => "Q8_0_U64",
            Q8_0_U72 => "Q8_0_U72",
            Q8_0_U80 => "Q8_0_U80",
            Q8_0_U88 => "Q8_0_U88",
            Q8_0_U96 => "Q8_0_U96",
            Q8_0_U104 => "Q8_0_U104",
            Q8_0_U112 => "Q8_0_U112",
            Q8_0_U120 => "Q8_0_U120",
        }
    }

    /// Whether the type is tuili's own (a pruned layout), unknown to ggml and llama.cpp.
    pub fn is_tuili_own(self) -> bool {
        self.id() >= 1024
    }

    /// The ggml type whose blocks a pruned layout keeps (its scales and values are that
    /// type's, bit for bit), or `None` for a dense type.
    pub fn dense_twin(self) -> Option<DType> {
        match self {
            DType::Q8_0_48 | DType::Q8_0_24 => Some(DType::Q8_0),
            t if t.pool_room().is_some() => Some(DType::Q8_0),
            DType::Q4_0_48 | DType::Q4_0_24 => Some(DType::Q4_0),
            _ => None,
        }
    }

    /// An unstructured layout's room in its row's pool, in kept values per 128 weights
    /// (`Q8_0_U40`: 40), or `None` for any other type.
    pub fn pool_room(self) -> Option<u64> {
        let id = self.id();
        (1101..=1115).contains(&id).then(|| 8 * (id as u64 - 1100))
    }

    /// The smallest unstructured Q8_0 layout whose rows of `cols` weights have room for
    /// `kept` values each, or `None` when none has (more than 120 of every 128 kept) or `cols`
    /// is not whole 128-weight super-blocks.
    pub fn q8_0_pooled(cols: u64, kept: u64) -> Option<DType> {
        if cols == 0 || !cols.is_multiple_of(128) {
            return None;
        }
        let room = kept.div_ceil(cols / 128).max(1).next_multiple_of(8);
        if room > 120 {
            return None;
        }
        DType::from_id(1100 + (room / 8) as u32).ok()
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for t in DType::ALL {
            assert_eq!(DType::from_id(t.id()).unwrap(), t);
            assert_eq!(DType::from_name(t.name()), Some(t));
        }
        assert_eq!(DType::from_id(4), Err(DTypeError::UnknownId { id: 4 }));
    }

    #[test]
    fn sizes() {
        assert_eq!(DType::Q4_0.bytes_for(64).unwrap(), 36);
        assert!(DType::Q4_K.bytes_for(100).is_err());
        assert!(DType::F32.bytes_for(u64::MAX).is_err());
        assert_eq!(DType::Q6_K.bits_per_weight(), 6.5625);
    }

    #[test]
    fn unstructured_layouts_by_room() {
        assert_eq!(DType::Q8_0_U40.pool_room(), Some(40));
        assert_eq!(DType::Q8_0_U40.bytes_for(2048).unwrap(), 16 * (24 + 40));
        assert_eq!(DType::Q8_0.pool_room(), None);
        // 70 % of 2048 pruned: 615 kept a row, 38.4 per 128 → room 40.
        assert_eq!(DType::q8_0_pooled(2048, 615), Some(DType::Q8_0_U40));
        assert_eq!(DType::q8_0_pooled(2048, 640), Some(DType::Q8_0_U40));
        assert_eq!(DType::q8_0_pooled(2048, 641), Some(DType::Q8_0_U48));
        assert_eq!(DType::q8_0_pooled(256, 0), Some(DType::Q8_0_U8));
        assert_eq!(DType::q8_0_pooled(256, 241), None);
        assert_eq!(DType::q8_0_pooled(200, 10), None);
        for t in DType::ALL.iter().filter(|t| t.pool_room().is_some()) {
            assert_eq!(t.dense_twin(), Some(DType::Q8_0));
            assert!(t.is_tuili_own());
        }
    }
}
