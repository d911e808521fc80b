//! GGML quant block layouts, byte-identical to GGUF.
//!
//! Every field is a byte array, so every block has alignment 1 and a `&[u8]` taken at any
//! offset of a memory-mapped file may be viewed as a slice of blocks (rows of Q4_0 are 18 bytes
//! long, so nothing better than byte alignment can be assumed). Sizes are asserted at compile
//! time against ggml's `type_size`.

use half::{bf16, f16};

/// Elements per "K-quant" super-block.
pub const QK_K: usize = 256;
/// Elements per legacy block (Q4_0 … Q8_1).
pub const QK: usize = 32;

#[inline]
pub fn f16_le(b: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

#[inline]
pub fn f16_to_le(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

#[inline]
pub fn bf16_le(b: [u8; 2]) -> f32 {
    bf16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// Q4_0: x = d · (q − 8), q ∈ [0,16). Low nibbles hold elements 0..16, high nibbles 16..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}

/// Q4_1: x = d · q + m.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}

/// Q5_0: x = d · (q − 16); the fifth bit of element j is bit j of `qh` (little-endian u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q5_1: x = d · q + m, q has 5 bits as in Q5_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q8_0: x = d · q, q: i8.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK],
}

/// Q8_0 pruned 2:4 (tuili's own): of each group of four weights two are kept, x = d · q at
/// their positions and 0 elsewhere. `qs[2g]`, `qs[2g + 1]`: group g's kept values, the lower
/// position first; `idx[g / 2] >> (4 · (g % 2))`: its two positions, 2 bits each (low: the
/// first).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0_24 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
    pub idx: [u8; QK / 8],
}

/// Q8_1: x = d · q; `s` = d · Σq (used by dot products against Q4_1/Q5_1).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [u8; QK],
}

/// Q2_K: 16 sub-blocks of 16; x = d · (scale & 15) · q − dmin · (scale >> 4), q 2 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}

/// Q3_K: 16 sub-blocks of 16 with 6-bit signed scales; q has 2 low bits in `qs` and the high
/// bit in `hmask` (a clear high bit means −4).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}

/// Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// Q5_K: as Q4_K with a fifth bit per element in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: 16 sub-blocks of 16 with i8 scales; q = (4 low bits in `ql`, 2 high in `qh`) − 32.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [u8; QK_K / 16],
    pub d: [u8; 2],
}

/// Q8_K: the activation type of K-quant dot products; d is an f32, `bsums` are the sums of
/// each group of 16 quants (i16).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [u8; QK_K],
    pub bsums: [u8; QK_K / 16 * 2],
}

macro_rules! assert_block {
    ($t:ty, $size:expr) => {
        const _: () = assert!(std::mem::size_of::<$t>() == $size);
        const _: () = assert!(std::mem::align_of::<$t>() == 1);
    };
}
assert_block!(BlockQ4_0, 18);
assert_block!(BlockQ4_1, 20);
assert_block!(BlockQ5_0, 22);
assert_block!(BlockQ5_1, 24);
assert_block!(BlockQ8_0, 34);
assert_block!(BlockQ8_1, 36);
assert_block!(BlockQ8_0_24, 22);
assert_block!(BlockQ2K, 84);
assert_block!(BlockQ3K, 110);
assert_block!(BlockQ4K, 144);
assert_block!(BlockQ5K, 176);
assert_block!(BlockQ6K, 210);
assert_block!(BlockQ8K, 292);

/// Marker for the block types above: plain old data of alignment 1, any bit pattern valid.
///
/// # Safety
/// Implementors must be `repr(C)`, contain only `u8` arrays, and have alignment 1.
pub unsafe trait Block: Copy {}
// SAFETY: each type is repr(C), made only of u8 arrays, alignment asserted to be 1 above.
unsafe impl Block for BlockQ4_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ4_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ5_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ5_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ8_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ8_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ8_0_24 {}
// SAFETY: as above.
unsafe impl Block for BlockQ2K {}
// SAFETY: as above.
unsafe impl Block for BlockQ3K {}
// SAFETY: as above.
unsafe impl Block for BlockQ4K {}
// SAFETY: as above.
unsafe impl Block for BlockQ5K {}
// SAFETY: as above.
unsafe impl Block for BlockQ6K {}
// SAFETY: as above.
unsafe impl Block for BlockQ8K {}

/// Views bytes as blocks. Returns `None` unless `bytes.len()` is a whole number of blocks.
pub fn as_blocks<B: Block>(bytes: &[u8]) -> Option<&[B]> {
    let size = std::mem::size_of::<B>();
    if !bytes.len().is_multiple_of(size) {
        return None;
    }
    // SAFETY: B has alignment 1 and every bit pattern is valid (the `Block` contract), and the
    // length is a whole number of blocks, so the new slice covers exactly the same bytes.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) })
}
