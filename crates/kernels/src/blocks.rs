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

/// Sub-blocks (of [`QK`] weights, one base-type block each) per sparse super-block.
pub const SPARSE_SUB: usize = 4;
/// Weights per sparse super-block.
pub const QS: usize = SPARSE_SUB * QK;

/// Q8_0 pruned 4 of every 8 (tuili's own `Q8_0_4:8`; 2:4 rows are 4:8 rows too), 128 weights:
/// four Q8_0 blocks with only their kept values stored. `mask`: four little-endian u32, bit j
/// of word s set when weight 32s + j is kept (exactly four bits of every byte); `d`: the four
/// blocks' f16 scales (Q8_0's: amax/127 of the 32 weights, zeros included, so a pruned row
/// stores the very scales and values dense Q8_0 would); `qs[16s..16s + 16]`: block s's kept
/// int8 values in position order. x = d_s · q at the kept positions, 0 elsewhere. The masks
/// come first and the kept values last so that a kernel loads the 64 values as one vector and
/// the masks as two 64-bit words.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0S {
    pub mask: [u8; 16],
    pub d: [u8; 8],
    pub qs: [u8; QS / 2],
}

/// Q4_0 pruned 4 of every 8 (`Q4_0_4:8`), 128 weights: masks and scales as [`BlockQ8_0S`]
/// (Q4_0's scales and values); the super-block's 64 kept values u = q + 8, in order (block
/// s's are 16s..16s + 16), as nibbles: value k < 32 in the low nibble of `qs[k]`, value
/// 32 + k in its high nibble — so that the 32 bytes masked, and shifted, are the 64 values
/// in order (as Q4_0 splits its 32 values over low and high nibbles). x = d_s · (u − 8) at the
/// kept positions, 0 elsewhere.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_0S {
    pub mask: [u8; 16],
    pub d: [u8; 8],
    pub qs: [u8; QS / 4],
}

/// Q8_0 pruned 2:4 (`Q8_0_2:4`), 128 weights: as [`BlockQ8_0S`] with the keep-masks coded in
/// 12 bytes instead of 16. A group of four keeps two, so its mask bits b0..b3 have b3 =
/// b0 ⊕ b1 ⊕ b2 (b0 + b1 + b2 is 1 or 2): `codes` is 96 little-endian bits, bits 3g..3g + 3
/// being b0 b1 b2 of group g (weights 4g..4g + 4), packed so that a kernel picks any group's
/// with one bit-field select (`vpmultishiftqb`); [`codes_masks`] rebuilds the masks.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0P {
    pub codes: [u8; 12],
    pub d: [u8; 8],
    pub qs: [u8; QS / 2],
}

/// Q4_0 pruned 2:4 (`Q4_0_2:4`): the codes of [`BlockQ8_0P`], the scales and nibbles of
/// [`BlockQ4_0S`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_0P {
    pub codes: [u8; 12],
    pub d: [u8; 8],
    pub qs: [u8; QS / 4],
}

/// A sparse super-block type (`Q8_0_4:8`, `Q4_0_4:8`, `Q8_0_2:4`, `Q4_0_2:4`): a header with
/// the keep-masks (`HEADER` bytes), the four base-type scales, the 64 kept values.
pub trait Sparse: Block {
    /// Q4_0 values (32 nibble bytes), else Q8_0's (64 int8).
    const Q4: bool;
    /// Header bytes: 16 (masks as they are) or 12 (2:4 codes).
    const HEADER: usize;
    /// The four blocks' keep-masks (bit j of word s: weight 32s + j kept).
    fn masks(&self) -> [u32; 4];
    /// Block s's keep-mask alone (what a block-at-a-time kernel needs: no other block's
    /// decoded).
    fn mask(&self, s: usize) -> u32;
    /// The four f16 scales.
    fn scales(&self) -> &[u8; 8];
    /// The kept values as stored.
    fn values(&self) -> &[u8];
    /// Block s's 16 kept values as signed integers q (x = d·q).
    fn kept(&self, s: usize) -> [i8; 16] {
        let v = self.values();
        if Self::Q4 {
            // Blocks 0, 1: low nibbles of bytes 0..16, 16..32; blocks 2, 3: high nibbles.
            std::array::from_fn(|k| ((v[16 * (s % 2) + k] >> (4 * (s / 2))) & 0x0F) as i8 - 8)
        } else {
            std::array::from_fn(|k| v[16 * s + k] as i8)
        }
    }
    /// Block s's scale.
    fn scale(&self, s: usize) -> f32 {
        let d = self.scales();
        f16_le([d[2 * s], d[2 * s + 1]])
    }
}

/// `N` little-endian u32 from bytes.
pub fn le_words<const N: usize>(b: &[u8]) -> [u32; N] {
    std::array::from_fn(|k| {
        u32::from_le_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]])
    })
}

macro_rules! sparse_block {
    ($t:ty, $q4:literal, $hdr:literal, $field:ident, $masks:expr, $mask:expr) => {
        impl Sparse for $t {
            const Q4: bool = $q4;
            const HEADER: usize = $hdr;
            fn masks(&self) -> [u32; 4] {
                $masks(&self.$field)
            }
            fn mask(&self, s: usize) -> u32 {
                $mask(&self.$field, s)
            }
            fn scales(&self) -> &[u8; 8] {
                &self.d
            }
            fn values(&self) -> &[u8] {
                &self.qs
            }
        }
    };
}
sparse_block!(BlockQ8_0S, false, 16, mask, le_words::<4>, word_mask);
sparse_block!(BlockQ4_0S, true, 16, mask, le_words::<4>, word_mask);
sparse_block!(BlockQ8_0P, false, 12, codes, codes_masks, codes_mask);
sparse_block!(BlockQ4_0P, true, 12, codes, codes_masks, codes_mask);

/// Block s's keep-mask of four stored masks.
fn word_mask(mask: &[u8; 16], s: usize) -> u32 {
    le_words::<1>(&mask[4 * s..])[0]
}

/// Block s's keep-mask of a super-block's 2:4 codes (only its half decoded).
fn codes_mask(codes: &[u8; 12], s: usize) -> u32 {
    (codes_half(codes, s / 2) >> (32 * (s % 2))) as u32
}

/// The 2:4 codes of groups `16h..16h + 16` (the 48 bits from bit 48h) as those groups' 64 mask
/// bits: code bits 3g..3g + 3 to mask bits 4g..4g + 3 (a bit-deposit), and bit 4g + 3 their
/// exclusive or.
#[inline]
fn codes_half_mask(x: u64) -> u64 {
    let mut m = 0u64;
    for g in 0..16 {
        m |= (x >> (3 * g) & 7) << (4 * g);
    }
    m | codes_b3(m)
}

/// Bit 4g + 3 of a 2:4 mask whose bits 4g..4g + 3 hold b0 b1 b2: b0 ⊕ b1 ⊕ b2.
#[inline]
fn codes_b3(m: u64) -> u64 {
    ((m ^ m >> 1 ^ m >> 2) & 0x1111_1111_1111_1111) << 3
}

/// The four keep-masks of a super-block's 2:4 codes.
pub fn codes_masks(codes: &[u8; 12]) -> [u32; 4] {
    let (lo, hi) = (codes_half(codes, 0), codes_half(codes, 1));
    [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32]
}

/// The 64 mask bits of half `h` (blocks 2h, 2h + 1) of a super-block's 2:4 codes.
fn codes_half(codes: &[u8; 12], h: usize) -> u64 {
    let b: [u8; 8] = std::array::from_fn(|i| if i < 6 { codes[6 * h + i] } else { 0 });
    codes_half_mask(u64::from_le_bytes(b))
}

/// The 2:4 codes of keep-masks (each group of four with two bits set).
pub fn masks_codes(masks: &[u32; 4]) -> [u8; 12] {
    let mut bits = 0u128;
    for (s, &m) in masks.iter().enumerate() {
        for g in 0..8 {
            bits |= ((m >> (4 * g) & 7) as u128) << (3 * (8 * s + g));
        }
    }
    let b = bits.to_le_bytes();
    std::array::from_fn(|i| b[i])
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
assert_block!(BlockQ8_0S, 88);
assert_block!(BlockQ4_0S, 56);
assert_block!(BlockQ8_0P, 84);
assert_block!(BlockQ4_0P, 52);
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
unsafe impl Block for BlockQ8_0S {}
// SAFETY: as above.
unsafe impl Block for BlockQ4_0S {}
// SAFETY: as above.
unsafe impl Block for BlockQ8_0P {}
// SAFETY: as above.
unsafe impl Block for BlockQ4_0P {}
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
