//! Matrix × matrix for prompt processing: weight rows against groups of eight tokens, with the
//! tokens in the vector lanes — Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K weights
//! with int8 activations
//! ([`gemm_rows`]) and F32 / F16 / BF16 weights with f32 activations ([`gemm_rows_f`]).
//!
//! The dot-product kernels (`dot`) put the 32 elements of a block in the lanes, so every block
//! of every (row, token) pair ends in a convert, a scale and a horizontal reduction. Here the
//! activations of eight tokens are interleaved in groups of four bytes ([`Q8Tiles`]), so one
//! `vpdpbusd` of a row's four weight bytes (broadcast) against a 32-byte load gives the partial
//! sums of all eight tokens at once: 32 multiply-adds per instruction with nothing to reduce.
//! Per block and row, the eight integer sums are corrected for the weight offset, converted,
//! and scaled by d_w (broadcast) × d_a (one vector of the eight tokens' scales). K-quant
//! weights take activations quantized per super-block of 256 ([`Q8Tiles::build_k`], ggml's
//! Q8_K): their blocks are scaled by d_w only and d_a multiplies a super-block's sum once.
//!
//! Weights enter as unsigned bytes: Q4_0 nibbles u (= q + 8), Q5_0's five bits (q + 16) and
//! Q8_0 bytes q + 128; the offset is removed through the activation block sums: Σ(u − off)·a =
//! Σ u·a − off·Σ a. Q4_1 and Q5_1 (x = d·u + m) take their m as a min, below. K-quants
//! enter as their unsigned values with a float scale and min per 32-element sub-block
//! (x = s·u − m: Q4_K, Q5_K), or a scale per 16 elements (Q6_K: u = q + 32, Q3_K: u = q + 4,
//! offsets as above, per half block; Q2_K: with a min per 16), and the min comes off through
//! the activations' block (or half-block) sums: Σ(s·u − m)·a = s·Σ u·a − m·Σ a.
//! Four rows at a time are unpacked (to bytes, or to f32 for the float path) into a caller's
//! buffer and reused for every token group, each activation load serving the four rows. No
//! weights are copied beyond those four rows.

use crate::act::{Q8KRow, Q8Row};
use crate::blocks::{
    as_blocks, f16_le, BlockQ4K, BlockQ4_0, BlockQ4_0P, BlockQ4_0S, BlockQ5K, BlockQ6K, BlockQ8_0,
    BlockQ8_0P, BlockQ8_0S, Sparse, QK, QK_K, QS, SPARSE_SUB,
};
use crate::cpu::Isa;
use tuili_core::DType;

/// Tokens per group (vector lanes of f32 / i32 in 256 bits).
pub const GROUP: usize = 8;

/// Activations of up to `n_tok` tokens, interleaved for [`gemm_rows`]:
/// `qs[g][b][k][t][4]`: token t's bytes 4k..4k+4 of block b, group g;
/// `d[g][b][t]`, `isum[g][b][t]`: block scales and integer sums (0 for padding tokens);
/// `dsum[g][b][t]` = d·isum, the block's activation sum (for weights with separate mins),
/// `fsum` = isum in floats (the same in units of d, for kernels that apply d per super-block),
/// and `isum_lo`, `isum_hi` the integer sums of its two halves of 16 (for weights scaled per 16).
#[derive(Debug, Clone, Default)]
pub struct Q8Tiles {
    pub n_tok: usize,
    pub n_groups: usize,
    /// Blocks per row.
    pub nb: usize,
    /// Built from [`Q8KRow`]s ([`Q8Tiles::build_k`]): the eight blocks of a super-block of 256
    /// share one scale, so the K-quant kernels sum a super-block's products in units of it
    /// and multiply by d_a once (an f32 multiply fewer per block, row and token group).
    pub per_superblock: bool,
    qs: Vec<i8>,
    d: Vec<f32>,
    isum: Vec<i32>,
    dsum: Vec<f32>,
    fsum: Vec<f32>,
    isum_lo: Vec<i32>,
    isum_hi: Vec<i32>,
}

impl Q8Tiles {
    /// Interleaves `rows` (each `nb` blocks long); allocates only when growing.
    pub fn build(&mut self, rows: &[Q8Row], nb: usize) {
        for mut g in self.groups_iter(rows.len(), nb, false) {
            g.fill_q8(rows);
        }
    }

    /// Interleaves Q8_K `rows` (`nb` blocks of 32 long, a multiple of 8): every block of a
    /// super-block takes its scale, the halves' sums are its `bsums`.
    pub fn build_k(&mut self, rows: &[Q8KRow], nb: usize) {
        for mut g in self.groups_iter(rows.len(), nb, true) {
            g.fill_q8k(rows);
        }
    }

    /// Sizes the tiles for `n` tokens of `nb` blocks (allocating only when growing) and hands
    /// out their groups of eight tokens, to fill on several threads ([`TileGroup::fill_q8`],
    /// [`TileGroup::fill_q8k`] — tiles `per_superblock` need the latter, with `nb` a multiple
    /// of 8). The list is a small allocation: for prompt batches; `build` and `build_k` fill
    /// the groups in turn without it.
    pub fn groups(&mut self, n: usize, nb: usize, per_superblock: bool) -> Vec<TileGroup<'_>> {
        self.groups_iter(n, nb, per_superblock).collect()
    }

    /// [`Q8Tiles::groups`] as an iterator.
    fn groups_iter(
        &mut self,
        n: usize,
        nb: usize,
        per_superblock: bool,
    ) -> impl Iterator<Item = TileGroup<'_>> {
        assert!(
            !per_superblock || nb.is_multiple_of(QK_K / QK),
            "Q8_K rows are whole super-blocks"
        );
        let ng = n.div_ceil(GROUP);
        self.n_tok = n;
        self.n_groups = ng;
        self.nb = nb;
        self.per_superblock = per_superblock;
        let per = nb * GROUP;
        self.qs.resize(ng * per * QK, 0);
        for v in [&mut self.d, &mut self.dsum, &mut self.fsum] {
            v.resize(ng * per, 0.0);
        }
        for v in [&mut self.isum, &mut self.isum_lo, &mut self.isum_hi] {
            v.resize(ng * per, 0);
        }
        // Each field's values for group g are one contiguous run: [g][b][..].
        let mut qs = self.qs[..ng * per * QK].chunks_mut(per * QK);
        let mut d = self.d[..ng * per].chunks_mut(per);
        let mut isum = self.isum[..ng * per].chunks_mut(per);
        let mut dsum = self.dsum[..ng * per].chunks_mut(per);
        let mut fsum = self.fsum[..ng * per].chunks_mut(per);
        let mut isum_lo = self.isum_lo[..ng * per].chunks_mut(per);
        let mut isum_hi = self.isum_hi[..ng * per].chunks_mut(per);
        (0..ng).map_while(move |g| {
            Some(TileGroup {
                g,
                n,
                nb,
                qs: qs.next()?,
                d: d.next()?,
                isum: isum.next()?,
                dsum: dsum.next()?,
                fsum: fsum.next()?,
                isum_lo: isum_lo.next()?,
                isum_hi: isum_hi.next()?,
            })
        })
    }

    /// Whether the kernels for `dtype` apply the activation scale once per super-block
    /// (the types whose dot products take Q8_K activations, `act_kind`: the K-quants, on tiles
    /// from [`Q8Tiles::build_k`]); others scale every block.
    fn scales_per_superblock(&self, dtype: DType) -> bool {
        self.per_superblock
            && self.nb.is_multiple_of(QK_K / QK)
            && crate::types::act_kind(dtype) == crate::act::ActKind::Q8K
    }
}

/// One group of eight tokens of a [`Q8Tiles`] (from [`Q8Tiles::groups`]), filled on its own:
/// groups are disjoint, so threads may fill them side by side.
#[derive(Debug)]
pub struct TileGroup<'a> {
    g: usize,
    n: usize,
    nb: usize,
    qs: &'a mut [i8],       // [nb, 8 (k), 8 (t), 4]
    d: &'a mut [f32],       // [nb, 8 (t)]
    isum: &'a mut [i32],    // [nb, 8]
    dsum: &'a mut [f32],    // [nb, 8]
    fsum: &'a mut [f32],    // [nb, 8]
    isum_lo: &'a mut [i32], // [nb, 8]
    isum_hi: &'a mut [i32], // [nb, 8]
}

impl TileGroup<'_> {
    /// Fills the group from the tokens' Q8_0 rows (all `n` of them; the group takes its own).
    pub fn fill_q8(&mut self, rows: &[Q8Row]) {
        self.fill(|tok, b| {
            let r = &rows[tok];
            let q = &r.qs[b * QK..(b + 1) * QK];
            let lo: i32 = q[..QK / 2].iter().map(|&v| v as i32).sum();
            (q, r.d[b], lo, r.isum[b] - lo)
        });
    }

    /// Fills the group from the tokens' Q8_K rows.
    pub fn fill_q8k(&mut self, rows: &[Q8KRow]) {
        self.fill(|tok, b| {
            let r = &rows[tok];
            (
                &r.qs[b * QK..(b + 1) * QK],
                r.d[b * QK / QK_K],
                r.bsums[2 * b],
                r.bsums[2 * b + 1],
            )
        });
    }

    /// `block(tok, b)` gives token tok's block b: its 32 values, scale and the integer sums
    /// of its halves; padding tokens (past n) get zeros.
    fn fill<'r>(&mut self, block: impl Fn(usize, usize) -> (&'r [i8], f32, i32, i32)) {
        const ZERO: [i8; QK] = [0; QK];
        for b in 0..self.nb {
            // The block's 32 values of each of the eight tokens as 4-byte groups, written out
            // group-major: dst[k][t] = src[t][k] (fixed-size arrays: no bounds checks left).
            let mut src = [[[0i8; 4]; QK / 4]; GROUP];
            for (t, s) in src.iter_mut().enumerate() {
                let tok = self.g * GROUP + t;
                let (q, d, lo, hi) = if tok < self.n {
                    block(tok, b)
                } else {
                    (&ZERO[..], 0.0, 0, 0)
                };
                for (k, g) in s.iter_mut().enumerate() {
                    g.copy_from_slice(&q[4 * k..4 * k + 4]);
                }
                let i = b * GROUP + t;
                self.d[i] = d;
                self.isum[i] = lo + hi;
                self.dsum[i] = d * (lo + hi) as f32;
                self.fsum[i] = (lo + hi) as f32;
                self.isum_lo[i] = lo;
                self.isum_hi[i] = hi;
            }
            let dst = &mut self.qs[b * QK * GROUP..(b + 1) * QK * GROUP];
            for (k, row) in dst.chunks_exact_mut(GROUP * 4).enumerate() {
                for (t, g) in row.chunks_exact_mut(4).enumerate() {
                    g.copy_from_slice(&src[t][k]);
                }
            }
        }
    }
}

/// [`unpack_row`] with explicit vector code: a row is unpacked for every batch, so for
/// batches of a few tokens this is a large share of the work.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn unpack_row_avx2(
    dtype: DType,
    w: &[u8],
    bytes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> i32 {
    use std::arch::x86_64::*;
    match dtype {
        DType::Q2_K | DType::Q3_K => {
            let m3 = _mm256_set1_epi8(3);
            let one = _mm256_set1_epi8(1);
            for_lowbit_blocks(dtype, w, |b, k| {
                assert!(bytes.len() >= (b + 1) * QK_K && scales.len() >= (b + 1) * 16);
                assert!(mins.len() >= (b + 1) * 16);
                for g in 0..16 {
                    scales[b * 16 + g] = k.d * k.scales[g] as f32;
                    mins[b * 16 + g] = k.dmin * k.mins[g] as f32;
                }
                // SAFETY: 64 bytes of qs and 32 of hmask; 256 output bytes (asserted).
                unsafe {
                    let hm = k.hmask.map(|h| _mm256_loadu_si256(h.as_ptr().cast()));
                    for half in 0..2 {
                        let q = _mm256_loadu_si256(k.qs.as_ptr().add(32 * half).cast());
                        for j in 0..4 {
                            // Elements 32j..32j+32 of the half: bits 2j of qs, Q3_K's high
                            // bit (4·half + j of hmask) as 4.
                            let mut u = _mm256_and_si256(
                                _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)),
                                m3,
                            );
                            if let Some(hm) = hm {
                                let k = _mm_cvtsi32_si128((4 * half + j) as i32);
                                let h = _mm256_and_si256(_mm256_srl_epi16(hm, k), one);
                                u = _mm256_or_si256(u, _mm256_slli_epi16(h, 2));
                            }
                            _mm256_storeu_si256(
                                bytes
                                    .as_mut_ptr()
                                    .add(b * QK_K + 128 * half + 32 * j)
                                    .cast(),
                                u,
                            );
                        }
                    }
                }
            });
            lowbit_offset(dtype)
        }
        DType::Q6_K => {
            let blocks = crate::blocks::as_blocks::<BlockQ6K>(w).unwrap_or(&[]);
            assert!(bytes.len() >= blocks.len() * QK_K && scales.len() >= blocks.len() * 16);
            let m4 = _mm256_set1_epi8(0x0F);
            let m3 = _mm256_set1_epi8(3);
            for (b, blk) in blocks.iter().enumerate() {
                k6_scales(blk, &mut scales[b * 16..b * 16 + 16]);
                for half in 0..2 {
                    // SAFETY: 64 bytes of ql and 32 of qh per half; 128 output bytes per half
                    // (asserted above).
                    unsafe {
                        let l0 = _mm256_loadu_si256(blk.ql.as_ptr().add(64 * half).cast());
                        let l1 = _mm256_loadu_si256(blk.ql.as_ptr().add(64 * half + 32).cast());
                        let h = _mm256_loadu_si256(blk.qh.as_ptr().add(32 * half).cast());
                        // Bits 2i..2i+2 of qh to bits 4..6: u = q + 32 in 0..63.
                        let hi = |v: __m256i| _mm256_slli_epi16(_mm256_and_si256(v, m3), 4);
                        let u = [
                            _mm256_or_si256(_mm256_and_si256(l0, m4), hi(h)),
                            _mm256_or_si256(_mm256_and_si256(l1, m4), hi(_mm256_srli_epi16(h, 2))),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                hi(_mm256_srli_epi16(h, 4)),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                hi(_mm256_srli_epi16(h, 6)),
                            ),
                        ];
                        let o = bytes.as_mut_ptr().add(b * QK_K + 128 * half);
                        for (k, v) in u.iter().enumerate() {
                            _mm256_storeu_si256(o.add(32 * k).cast(), *v);
                        }
                    }
                }
            }
            32
        }
        DType::Q4_K | DType::Q5_K => {
            let m4 = _mm256_set1_epi8(0x0F);
            let one = _mm256_set1_epi8(1);
            for_k4_blocks(dtype, w, |b, k| {
                assert!(bytes.len() >= (b + 1) * QK_K && scales.len() >= (b + 1) * 8);
                assert!(mins.len() >= (b + 1) * 8);
                k4_scales(
                    &k,
                    &mut scales[b * 8..b * 8 + 8],
                    &mut mins[b * 8..b * 8 + 8],
                );
                // SAFETY: 32 bytes of qh.
                let qh =
                    k.qh.map(|h| unsafe { _mm256_loadu_si256(h.as_ptr().cast()) });
                for g in 0..4 {
                    // Q5_K: bits 2g and 2g+1 of qh[l] are the fifth bits of the two
                    // sub-blocks, moved to bit 4.
                    let (h_lo, h_hi) = match qh {
                        Some(qh) => {
                            let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32));
                            (
                                _mm256_slli_epi16(_mm256_and_si256(h, one), 4),
                                _mm256_slli_epi16(
                                    _mm256_and_si256(_mm256_srli_epi16(h, 1), one),
                                    4,
                                ),
                            )
                        }
                        None => (_mm256_setzero_si256(), _mm256_setzero_si256()),
                    };
                    // SAFETY: 32 bytes of nibbles per group; 64 output bytes per group
                    // (asserted above).
                    unsafe {
                        let q = _mm256_loadu_si256(k.qs.as_ptr().add(32 * g).cast());
                        let o = bytes.as_mut_ptr().add(b * QK_K + 64 * g);
                        _mm256_storeu_si256(
                            o.cast(),
                            _mm256_or_si256(_mm256_and_si256(q, m4), h_lo),
                        );
                        _mm256_storeu_si256(
                            o.add(32).cast(),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h_hi),
                        );
                    }
                }
            });
            0
        }
        DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => {
            let m4 = _mm_set1_epi8(0x0F);
            // Byte j of the fifth-bit vector takes byte j/8 of qh and tests bit j % 8.
            let spread = _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            );
            let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
            let b4 = _mm256_set1_epi8(0x10);
            for_legacy_blocks(dtype, w, |b, k| {
                assert!(bytes.len() >= (b + 1) * QK && scales.len() > b && mins.len() > b);
                scales[b] = k.d;
                if let Some(m) = k.m {
                    mins[b] = -m;
                }
                // SAFETY: 16 bytes of nibbles; 32 output bytes (asserted).
                unsafe {
                    let q = _mm_loadu_si128(k.qs.as_ptr().cast());
                    let u = _mm256_set_m128i(
                        _mm_and_si128(_mm_srli_epi16(q, 4), m4),
                        _mm_and_si128(q, m4),
                    );
                    let u = match k.qh {
                        Some(qh) => {
                            let h = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), spread);
                            let set = _mm256_cmpeq_epi8(_mm256_and_si256(h, bit), bit);
                            _mm256_or_si256(u, _mm256_and_si256(set, b4))
                        }
                        None => u,
                    };
                    _mm256_storeu_si256(bytes.as_mut_ptr().add(b * QK).cast(), u);
                }
            });
            legacy_offset(dtype)
        }
        DType::Q4_0 => {
            let blocks = crate::blocks::as_blocks::<BlockQ4_0>(w).unwrap_or(&[]);
            assert!(bytes.len() >= blocks.len() * QK && scales.len() >= blocks.len());
            let m4 = _mm_set1_epi8(0x0F);
            for (b, blk) in blocks.iter().enumerate() {
                scales[b] = f16_le(blk.d);
                // SAFETY: 16 bytes of nibbles per block; 32 output bytes per block (asserted).
                unsafe {
                    let q = _mm_loadu_si128(blk.qs.as_ptr().cast());
                    let o = bytes.as_mut_ptr().add(b * QK);
                    _mm_storeu_si128(o.cast(), _mm_and_si128(q, m4));
                    _mm_storeu_si128(o.add(16).cast(), _mm_and_si128(_mm_srli_epi16(q, 4), m4));
                }
            }
            8
        }
        _ => {
            let blocks = crate::blocks::as_blocks::<BlockQ8_0>(w).unwrap_or(&[]);
            assert!(bytes.len() >= blocks.len() * QK && scales.len() >= blocks.len());
            let flip = _mm256_set1_epi8(-128);
            for (b, blk) in blocks.iter().enumerate() {
                scales[b] = f16_le(blk.d);
                // SAFETY: 32 quants per block; 32 output bytes per block (asserted).
                unsafe {
                    let q = _mm256_loadu_si256(blk.qs.as_ptr().cast());
                    _mm256_storeu_si256(
                        bytes.as_mut_ptr().add(b * QK).cast(),
                        _mm256_xor_si256(q, flip),
                    );
                }
            }
            128
        }
    }
}

/// Unpacks with the best code for `isa` (the token-lane kernels only run with AVX2 or better).
#[cfg(target_arch = "x86_64")]
fn unpack(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    bytes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> i32 {
    if dtype.pool_room().is_some() {
        unpack_pooled(isa, w, bytes, scales)
    } else if dtype.dense_twin().is_some() {
        unpack_sparse(isa, dtype, w, bytes, scales)
    } else if isa >= Isa::Avx2 {
        // SAFETY: Avx2 or better is reported by run-time detection only with AVX2 and F16C.
        unsafe { unpack_row_avx2(dtype, w, bytes, scales, mins) }
    } else {
        unpack_row(dtype, w, bytes, scales, mins)
    }
}

/// The fields of a Q4_K or Q5_K block that the unpacking reads (Q5_K adds `qh`).
struct K4Block<'a> {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: &'a [u8; 12],
    qs: &'a [u8; QK_K / 2],
    qh: Option<&'a [u8; QK_K / 8]>,
}

/// Calls `f(b, block b)` for every block of a Q4_K or Q5_K row (nothing for other types or a
/// row that is not whole blocks).
fn for_k4_blocks(dtype: DType, w: &[u8], mut f: impl FnMut(usize, K4Block<'_>)) {
    if dtype == DType::Q5_K {
        for (b, k) in crate::blocks::as_blocks::<BlockQ5K>(w)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let (d, dmin, scales, qs, qh) = (k.d, k.dmin, &k.scales, &k.qs, Some(&k.qh));
            f(
                b,
                K4Block {
                    d,
                    dmin,
                    scales,
                    qs,
                    qh,
                },
            );
        }
    } else {
        for (b, k) in crate::blocks::as_blocks::<BlockQ4K>(w)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let (d, dmin, scales, qs) = (k.d, k.dmin, &k.scales, &k.qs);
            f(
                b,
                K4Block {
                    d,
                    dmin,
                    scales,
                    qs,
                    qh: None,
                },
            );
        }
    }
}

/// A Q4_K/Q5_K block's eight sub-block scales d·sc_j and mins dmin·m_j.
fn k4_scales(k: &K4Block<'_>, scales: &mut [f32], mins: &mut [f32]) {
    let (d, dmin) = (f16_le(k.d), f16_le(k.dmin));
    for j in 0..8 {
        let (sc, m) = crate::dequant::k4_scale_min(j, k.scales);
        scales[j] = d * sc as f32;
        mins[j] = dmin * m as f32;
    }
}

/// The fields of a Q2_K or Q3_K block that the unpacking reads: sixteen group scales and
/// (Q2_K) mins as integers with their multipliers d and dmin, the 2-bit values and (Q3_K) the
/// high bits.
struct LowBitBlock<'a> {
    d: f32,
    dmin: f32,
    scales: [i8; 16],
    mins: [i8; 16],
    qs: &'a [u8; QK_K / 4],
    hmask: Option<&'a [u8; QK_K / 8]>,
}

/// Calls `f(b, block b)` for every block of a Q2_K or Q3_K row.
fn for_lowbit_blocks(dtype: DType, w: &[u8], mut f: impl FnMut(usize, LowBitBlock<'_>)) {
    use crate::blocks::{BlockQ2K, BlockQ3K};
    if dtype == DType::Q2_K {
        for (b, k) in crate::blocks::as_blocks::<BlockQ2K>(w)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let block = LowBitBlock {
                d: f16_le(k.d),
                dmin: f16_le(k.dmin),
                scales: k.scales.map(|s| (s & 0x0F) as i8),
                mins: k.scales.map(|s| (s >> 4) as i8),
                qs: &k.qs,
                hmask: None,
            };
            f(b, block);
        }
    } else if dtype == DType::Q3_K {
        for (b, k) in crate::blocks::as_blocks::<BlockQ3K>(w)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let block = LowBitBlock {
                d: f16_le(k.d),
                dmin: 0.0,
                scales: crate::dequant::q3k_scales(&k.scales),
                mins: [0; 16],
                qs: &k.qs,
                hmask: Some(&k.hmask),
            };
            f(b, block);
        }
    }
}

/// Q3_K's values are unpacked as u = q + 4 (0..7, the offset comes off through the activation
/// sums); Q2_K's have a min per group instead.
fn lowbit_offset(dtype: DType) -> i32 {
    if dtype == DType::Q3_K {
        4
    } else {
        0
    }
}

/// Whether `dtype`'s blocks have a min term (x = s·u − m) rather than an integer offset
/// (Q6_K's offset of 32 is an offset: it comes off in each half's integer sum).
fn has_mins(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q2_K | DType::Q4_K | DType::Q5_K | DType::Q4_1 | DType::Q5_1
    )
}

/// The fields of a Q4_1, Q5_0 or Q5_1 block (x = d·q + m, or d·(q − 16) for Q5_0).
struct LegacyBlock<'a> {
    d: f32,
    /// The block's offset m (Q4_1, Q5_1).
    m: Option<f32>,
    /// The fifth bits (Q5_0, Q5_1): bit j for element j.
    qh: Option<u32>,
    qs: &'a [u8; QK / 2],
}

/// Calls `f(b, block b)` for every block of a Q4_1, Q5_0 or Q5_1 row (nothing for other types
/// or a row that is not whole blocks).
fn for_legacy_blocks(dtype: DType, w: &[u8], mut f: impl FnMut(usize, LegacyBlock<'_>)) {
    use crate::blocks::{BlockQ4_1, BlockQ5_0, BlockQ5_1};
    match dtype {
        DType::Q4_1 => {
            for (b, k) in crate::blocks::as_blocks::<BlockQ4_1>(w)
                .unwrap_or(&[])
                .iter()
                .enumerate()
            {
                let (d, m) = (f16_le(k.d), Some(f16_le(k.m)));
                f(
                    b,
                    LegacyBlock {
                        d,
                        m,
                        qh: None,
                        qs: &k.qs,
                    },
                );
            }
        }
        DType::Q5_0 => {
            for (b, k) in crate::blocks::as_blocks::<BlockQ5_0>(w)
                .unwrap_or(&[])
                .iter()
                .enumerate()
            {
                let qh = Some(u32::from_le_bytes(k.qh));
                f(
                    b,
                    LegacyBlock {
                        d: f16_le(k.d),
                        m: None,
                        qh,
                        qs: &k.qs,
                    },
                );
            }
        }
        DType::Q5_1 => {
            for (b, k) in crate::blocks::as_blocks::<BlockQ5_1>(w)
                .unwrap_or(&[])
                .iter()
                .enumerate()
            {
                let (d, m) = (f16_le(k.d), Some(f16_le(k.m)));
                let qh = Some(u32::from_le_bytes(k.qh));
                f(
                    b,
                    LegacyBlock {
                        d,
                        m,
                        qh,
                        qs: &k.qs,
                    },
                );
            }
        }
        _ => {}
    }
}

/// [`unpack_row`] of a sparse row ([`Sparse`]): each block's kept values to their positions as
/// the dense type's unsigned bytes (Q8_0: q + 128; Q4_0: u = q + 8), the dropped positions
/// that type's zero (128, 8); the scales as they are. With the best code for `isa`: VBMI2's
/// byte expand, AVX2's byte shuffle, or scalar. Returns the offset (128 or 8).
fn unpack_sparse(isa: Isa, dtype: DType, w: &[u8], bytes: &mut [u8], scales: &mut [f32]) -> i32 {
    fn go<B: Sparse>(isa: Isa, w: &[u8], bytes: &mut [u8], scales: &mut [f32]) -> i32 {
        let blocks = as_blocks::<B>(w).unwrap_or(&[]);
        assert!(bytes.len() >= blocks.len() * QS && scales.len() >= blocks.len() * SPARSE_SUB);
        #[cfg(target_arch = "x86_64")]
        {
            if isa >= Isa::Avx512Vbmi {
                // SAFETY: Avx512Vbmi is reported by run-time detection only with AVX2, F16C
                // and AVX-512 F/BW/VL/VBMI/VBMI2; sizes asserted.
                unsafe { x86_sparse::unpack_vbmi2(blocks, bytes, scales) };
                return if B::Q4 { 8 } else { 128 };
            }
            if isa >= Isa::Avx2 {
                // SAFETY: Avx2 or better is reported only with AVX2 and F16C; sizes asserted.
                unsafe { x86_sparse::unpack_avx2(blocks, bytes, scales) };
                return if B::Q4 { 8 } else { 128 };
            }
        }
        let _ = isa;
        let off: u8 = if B::Q4 { 8 } else { 128 };
        for (sb, blk) in blocks.iter().enumerate() {
            for (s, &mask) in blk.masks().iter().enumerate() {
                let b = SPARSE_SUB * sb + s;
                scales[b] = blk.scale(s);
                let o = &mut bytes[b * QK..(b + 1) * QK];
                o.fill(off);
                for (j, &q) in (0..QK).filter(|j| mask >> j & 1 == 1).zip(&blk.kept(s)) {
                    o[j] = (q as i32 + off as i32) as u8;
                }
            }
        }
        off as i32
    }
    match dtype {
        DType::Q8_0_48 => go::<BlockQ8_0S>(isa, w, bytes, scales),
        DType::Q4_0_48 => go::<BlockQ4_0S>(isa, w, bytes, scales),
        DType::Q8_0_24 => go::<BlockQ8_0P>(isa, w, bytes, scales),
        DType::Q4_0_24 => go::<BlockQ4_0P>(isa, w, bytes, scales),
        _ => 0,
    }
}

/// [`unpack_row`] of an unstructured sparse row (`crate::pool`; n = 32 · `scales.len()`
/// weights): the kept values to their positions as Q8_0's q + 128, the dropped positions 128;
/// the block scales as they are. VBMI2: two expanding loads a super-block straight from the
/// pool; else scalar. Returns the offset, 128.
fn unpack_pooled(isa: Isa, w: &[u8], bytes: &mut [u8], scales: &mut [f32]) -> i32 {
    let n = scales.len() * QK;
    let (Some((heads, pool)), Some(bytes)) = (crate::pool::split(w, n), bytes.get_mut(..n)) else {
        bytes.fill(128);
        scales.fill(0.0);
        return 128;
    };
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512Vbmi {
        // SAFETY: Avx512Vbmi is reported by run-time detection only with AVX2, F16C, POPCNT
        // and AVX-512 F/BW/VL/VBMI/VBMI2; `bytes` holds n values, `scales` n / 32, the heads
        // n / 128 super-blocks' worth.
        unsafe { x86_sparse::unpack_pooled_vbmi2(heads, pool, bytes, scales) };
        return 128;
    }
    let _ = isa;
    let mut k = 0;
    for (b, o) in bytes.chunks_exact_mut(QK).enumerate() {
        scales[b] = half::f16::from_bits(crate::pool::scale_bits(heads, b)).to_f32();
        let m = crate::pool::block_mask(heads, b);
        for (j, v) in o.iter_mut().enumerate() {
            *v = if m >> j & 1 == 1 {
                k += 1;
                pool.get(k - 1).copied().unwrap_or(0) ^ 0x80
            } else {
                128
            };
        }
    }
    128
}

/// The sparse row unpacking with AVX2 and with AVX-512 VBMI2.
#[cfg(target_arch = "x86_64")]
mod x86_sparse {
    use super::*;
    use crate::dot::x86::{expand_ctl, nibbles16};
    use std::arch::x86_64::*;

    /// Block by block: the 16 kept values broadcast and spread to their positions by one
    /// `vpshufb` (controls by mask byte), the dropped positions the dense type's zero.
    ///
    /// # Safety
    /// AVX2 and F16C; `bytes` holds 128 per super-block, `scales` four.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn unpack_avx2<B: Sparse>(
        blocks: &[B],
        bytes: &mut [u8],
        scales: &mut [f32],
    ) {
        let (flip, eight) = (_mm256_set1_epi8(-128), _mm256_set1_epi8(8));
        for (sb, k) in blocks.iter().enumerate() {
            for (s, &mask) in k.masks().iter().enumerate() {
                let b = SPARSE_SUB * sb + s;
                scales[b] = k.scale(s);
                let ctl = expand_ctl(mask);
                let e = if B::Q4 {
                    let qs: &[u8; 32] = k.values().try_into().unwrap_or(&[0; 32]);
                    let u = _mm256_broadcastsi128_si256(nibbles16(qs, s));
                    // The dropped positions are u = 8 (q = 0).
                    _mm256_blendv_epi8(_mm256_shuffle_epi8(u, ctl), eight, ctl)
                } else {
                    // SAFETY: 16 kept values per block.
                    let q = unsafe { _mm_loadu_si128(k.values().as_ptr().add(16 * s).cast()) };
                    let e = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(q), ctl);
                    _mm256_xor_si256(e, flip)
                };
                // SAFETY: 32 output bytes per block (the caller's contract).
                unsafe { _mm256_storeu_si256(bytes.as_mut_ptr().add(b * QK).cast(), e) };
            }
        }
    }

    /// An unstructured sparse row (`crate::pool`): per super-block the next kept values of
    /// the pool to their positions under its two 64-bit masks (`vpexpandb` from memory, which
    /// reads only as many bytes as a mask has bits), as q + 128; the dropped positions 128. A
    /// super-block whose values would run past the pool (malformed) and those after it are
    /// all 128 (zero weights).
    ///
    /// # Safety
    /// AVX2, F16C, POPCNT and AVX-512 F/BW/VL/VBMI2; `heads` holds 24 bytes for each 128 of
    /// `bytes`, `scales` one value for each 32.
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,popcnt")]
    pub(super) unsafe fn unpack_pooled_vbmi2(
        heads: &[u8],
        pool: &[u8],
        bytes: &mut [u8],
        scales: &mut [f32],
    ) {
        use crate::pool::HEAD;
        let flip = _mm512_set1_epi8(-128);
        let mut used = 0usize;
        for (sb, o) in bytes.chunks_exact_mut(QS).enumerate() {
            let [k01, k23] = crate::pool::mask(heads, sb);
            let (c01, c23) = (k01.count_ones() as usize, k23.count_ones() as usize);
            let (e01, e23) = if used + c01 + c23 <= pool.len() {
                // SAFETY: c01 + c23 pool bytes from `used` (checked just above).
                unsafe {
                    let v = pool.as_ptr().add(used);
                    (
                        _mm512_maskz_expandloadu_epi8(k01, v.cast()),
                        _mm512_maskz_expandloadu_epi8(k23, v.add(c01).cast()),
                    )
                }
            } else {
                (_mm512_setzero_si512(), _mm512_setzero_si512())
            };
            used += c01 + c23;
            // SAFETY: 128 output bytes in `o`; four scales of super-block sb (heads and
            // `scales` hold them: the caller's contract).
            unsafe {
                _mm512_storeu_si512(o.as_mut_ptr().cast(), _mm512_xor_si512(e01, flip));
                _mm512_storeu_si512(o.as_mut_ptr().add(64).cast(), _mm512_xor_si512(e23, flip));
                let d = _mm_cvtph_ps(_mm_loadl_epi64(heads.as_ptr().add(HEAD * sb + 16).cast()));
                _mm_storeu_ps(scales.as_mut_ptr().add(SPARSE_SUB * sb), d);
            }
        }
    }

    /// Per super-block: its kept values (Q8_0: as stored; Q4_0: the nibbles masked, then
    /// shifted) go to their positions under the two 64-bit masks (`vpexpandb`); the dropped
    /// positions take the dense type's zero (q + 128 = 128, u = 8).
    ///
    /// # Safety
    /// AVX2, F16C and AVX-512 F/BW/VL/VBMI2; `bytes` holds 128 per super-block, `scales` four.
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2")]
    pub(super) unsafe fn unpack_vbmi2<B: Sparse>(
        blocks: &[B],
        bytes: &mut [u8],
        scales: &mut [f32],
    ) {
        let (m4, eight, flip) = (
            _mm512_set1_epi8(0x0F),
            _mm512_set1_epi8(8),
            _mm512_set1_epi8(-128),
        );
        for (sb, k) in blocks.iter().enumerate() {
            let m = k.masks();
            let k01: __mmask64 = m[0] as u64 | (m[1] as u64) << 32;
            let k23: __mmask64 = m[2] as u64 | (m[3] as u64) << 32;
            let v = k.values().as_ptr();
            // SAFETY: the values are 32 (Q4_0) or 64 bytes; the output bytes and scales fit
            // (the caller's contract).
            unsafe {
                let (e01, e23) = if B::Q4 {
                    let raw = _mm512_zextsi256_si512(_mm256_loadu_si256(v.cast()));
                    let lo = _mm512_and_si512(raw, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
                    (
                        _mm512_mask_expand_epi8(eight, k01, lo),
                        _mm512_mask_expand_epi8(eight, k23, hi),
                    )
                } else {
                    let kept = _mm512_loadu_si512(v.cast());
                    let high = _mm512_zextsi256_si512(_mm512_extracti64x4_epi64(kept, 1));
                    (
                        _mm512_xor_si512(_mm512_maskz_expand_epi8(k01, kept), flip),
                        _mm512_xor_si512(_mm512_maskz_expand_epi8(k23, high), flip),
                    )
                };
                let o = bytes.as_mut_ptr().add(QS * sb);
                _mm512_storeu_si512(o.cast(), e01);
                _mm512_storeu_si512(o.add(64).cast(), e23);
                let d = _mm_cvtph_ps(_mm_loadl_epi64(k.scales().as_ptr().cast()));
                _mm_storeu_ps(scales.as_mut_ptr().add(SPARSE_SUB * sb), d);
            }
        }
    }
}

/// The integer offset of a legacy type's unpacked values: 16 for Q5_0 (x = d·(u − 16)), 0 for
/// Q4_1 and Q5_1, whose offset m is a min (x = d·u − (−m)).
fn legacy_offset(dtype: DType) -> i32 {
    if dtype == DType::Q5_0 {
        16
    } else {
        0
    }
}

/// Scales per 32-element block: 2 for Q6_K (one per 16), else 1.
fn scales_per_block(dtype: DType) -> usize {
    if matches!(dtype, DType::Q6_K | DType::Q2_K | DType::Q3_K) {
        2
    } else {
        1
    }
}

/// A Q6_K block's sixteen scales d·sc_g (its values are unpacked as u = q + 32; the offset
/// comes off in the integer sums, as Q4_0's does).
fn k6_scales(blk: &BlockQ6K, scales: &mut [f32]) {
    let d = f16_le(blk.d);
    for g in 0..16 {
        scales[g] = d * blk.scales[g] as i8 as f32;
    }
}

/// Unpacks one row to unsigned bytes (Q4_0, Q4_1: nibble values; Q5_0, Q5_1: 5-bit values;
/// Q8_0: q + 128; Q4_K, Q5_K: their 4- or 5-bit values; Q6_K: q + 32) in element order, and
/// its block scales to f32 (one per 32 elements; Q6_K one per 16); for Q4_K and Q5_K d·sc of
/// each sub-block and the mins (dmin·m) into `mins`, for Q4_1 and Q5_1 d and −m. Returns the
/// integer weight offset (8, Q5_0 16, 128, Q6_K 32, or 0 for the types with mins, which are
/// applied separately).
fn unpack_row(
    dtype: DType,
    w: &[u8],
    bytes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> i32 {
    match dtype {
        DType::Q2_K | DType::Q3_K => {
            for_lowbit_blocks(dtype, w, |b, k| {
                for g in 0..16 {
                    scales[b * 16 + g] = k.d * k.scales[g] as f32;
                    mins[b * 16 + g] = k.dmin * k.mins[g] as f32;
                }
                for g in 0..16 {
                    let (half, j, part) = (g / 8, (g % 8) / 2, g % 2);
                    for l in 0..16 {
                        let q = (k.qs[32 * half + 16 * part + l] >> (2 * j)) & 3;
                        let h = k.hmask.map_or(0, |hm| (hm[16 * part + l] >> (g / 2)) & 1);
                        bytes[b * QK_K + 16 * g + l] = q | h << 2;
                    }
                }
            });
            lowbit_offset(dtype)
        }
        DType::Q6_K => {
            let blocks = crate::blocks::as_blocks::<BlockQ6K>(w).unwrap_or(&[]);
            for (b, blk) in blocks.iter().enumerate() {
                k6_scales(blk, &mut scales[b * 16..b * 16 + 16]);
                let v = crate::dot::scalar::q6_k_values(blk);
                for (o, q) in bytes[b * QK_K..(b + 1) * QK_K].iter_mut().zip(v) {
                    *o = (q as i32 + 32) as u8;
                }
            }
            32
        }
        DType::Q4_K | DType::Q5_K => {
            for_k4_blocks(dtype, w, |b, k| {
                k4_scales(
                    &k,
                    &mut scales[b * 8..b * 8 + 8],
                    &mut mins[b * 8..b * 8 + 8],
                );
                for g in 0..4 {
                    let o = &mut bytes[b * QK_K + 64 * g..b * QK_K + 64 * g + 64];
                    for l in 0..32 {
                        // Q5_K: the fifth bits at bits 2g, 2g+1 of qh[l].
                        let h = k.qh.map_or(0, |qh| qh[l] >> (2 * g));
                        o[l] = (k.qs[32 * g + l] & 0x0F) | (h & 1) << 4;
                        o[l + 32] = (k.qs[32 * g + l] >> 4) | (h >> 1 & 1) << 4;
                    }
                }
            });
            0
        }
        DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => {
            for_legacy_blocks(dtype, w, |b, k| {
                scales[b] = k.d;
                if let Some(m) = k.m {
                    mins[b] = -m;
                }
                let o = &mut bytes[b * QK..(b + 1) * QK];
                for j in 0..QK / 2 {
                    let (h0, h1) =
                        k.qh.map_or((0, 0), |qh| crate::dequant::q5_high_bits(qh, j));
                    o[j] = (k.qs[j] & 0x0F) | h0;
                    o[j + QK / 2] = (k.qs[j] >> 4) | h1;
                }
            });
            legacy_offset(dtype)
        }
        DType::Q8_0_48 | DType::Q4_0_48 | DType::Q8_0_24 | DType::Q4_0_24 => {
            unpack_sparse(Isa::Scalar, dtype, w, bytes, scales)
        }
        t if t.pool_room().is_some() => unpack_pooled(Isa::Scalar, w, bytes, scales),
        DType::Q4_0 => {
            let blocks = crate::blocks::as_blocks::<BlockQ4_0>(w).unwrap_or(&[]);
            for (b, blk) in blocks.iter().enumerate() {
                scales[b] = f16_le(blk.d);
                let o = &mut bytes[b * QK..(b + 1) * QK];
                for j in 0..QK / 2 {
                    o[j] = blk.qs[j] & 0x0F;
                    o[j + QK / 2] = blk.qs[j] >> 4;
                }
            }
            8
        }
        _ => {
            let blocks = crate::blocks::as_blocks::<BlockQ8_0>(w).unwrap_or(&[]);
            for (b, blk) in blocks.iter().enumerate() {
                scales[b] = f16_le(blk.d);
                for j in 0..QK {
                    bytes[b * QK + j] = blk.qs[j] ^ 0x80;
                }
            }
            128
        }
    }
}

/// Rows of `dtype` weights (`row_bytes` each) times every token of `tiles`:
/// `out[r · n_groups·8 + t]`, with room for the rows rounded up to four. `bytes` (≥ 4·cols)
/// and `scales` (≥ 4·cols/32) are scratch.
/// Returns false when the combination is not supported (the caller falls back to `dot`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    tiles: &Q8Tiles,
    out: &mut [f32],
    bytes: &mut [u8],
    scales: &mut [f32],
) -> bool {
    if !crate::types::has_gemm(isa, dtype) || row_bytes == 0 || !w.len().is_multiple_of(row_bytes) {
        return false;
    }
    let bb = dtype.block_bytes() as usize;
    let bl = dtype.block_len() as usize;
    if !row_bytes.is_multiple_of(bb) || row_bytes / bb * bl != tiles.nb * QK {
        return false;
    }
    let nb = tiles.nb;
    let cols = nb * QK;
    let n_rows = w.len() / row_bytes;
    let width = tiles.n_groups * GROUP;
    // Rows go four at a time: `out` has room for the rows rounded up to four (the padding
    // rows' results are junk), `bytes` for four unpacked rows, `scales` for their scales
    // and (after those) mins, up to two of each per block.
    if bytes.len() < 4 * cols
        || scales.len() < 16 * nb
        || out.len() < n_rows.next_multiple_of(4) * width
    {
        return false;
    }
    // `has_gemm` is false off x86_64, so the loop below only runs there.
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, tiles, bytes, scales, out, n_rows, cols, width);
        false
    }
    #[cfg(target_arch = "x86_64")]
    {
        rows4_loop(
            isa, dtype, w, row_bytes, tiles, out, bytes, scales, n_rows, nb, width,
        );
        true
    }
}

/// The x86_64 body of [`gemm_rows`] (sizes already checked there).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn rows4_loop(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    tiles: &Q8Tiles,
    out: &mut [f32],
    bytes: &mut [u8],
    scales: &mut [f32],
    n_rows: usize,
    nb: usize,
    width: usize,
) {
    let cols = nb * QK;
    let sps = scales_per_block(dtype);
    let per_row = nb * sps;
    let (scales, mins) = scales.split_at_mut(4 * per_row);
    let mins_used = has_mins(dtype);
    let per_sb = tiles.scales_per_superblock(dtype);
    let mut r = 0;
    while r < n_rows {
        let m = (n_rows - r).min(4);
        let mut off = 8;
        for j in 0..4 {
            let (bj, sj, mj) = (
                &mut bytes[j * cols..(j + 1) * cols],
                &mut scales[j * per_row..(j + 1) * per_row],
                &mut mins[j * per_row..(j + 1) * per_row],
            );
            if j < m {
                off = unpack(
                    isa,
                    dtype,
                    &w[(r + j) * row_bytes..(r + j + 1) * row_bytes],
                    bj,
                    sj,
                    mj,
                );
            } else {
                bj.fill(0);
                sj.fill(0.0);
                mj.fill(0.0);
            }
        }
        {
            // Rows past m have zero bytes, scales and mins; their results land in the padding.
            let dst = &mut out[r * width..(r + 4) * width];
            let mins = if mins_used {
                Some(&mins[..4 * per_row])
            } else {
                None
            };
            // SAFETY: `has_gemm` checked isa ≥ Avx2, which run-time detection grants only with
            // AVX2/FMA/F16C (and Avx512Vnni only with AVX512F/BW/VL/VNNI); buffer sizes were
            // checked above.
            unsafe {
                if isa >= Isa::Avx512Vnni {
                    x86::row_vnni(
                        &bytes[..4 * cols],
                        &scales[..4 * per_row],
                        mins,
                        sps,
                        off,
                        per_sb,
                        tiles,
                        dst,
                        width,
                    );
                } else {
                    x86::row_avx2(
                        &bytes[..4 * cols],
                        &scales[..4 * per_row],
                        mins,
                        sps,
                        off,
                        per_sb,
                        tiles,
                        dst,
                        width,
                    );
                }
            }
        }
        r += m;
    }
}

/// The scalar twin of [`gemm_rows`] (same layout, same integer arithmetic). `scales` holds
/// at least 4·cols/32 values (a row's scales, then its mins, up to two per block).
pub fn gemm_rows_scalar(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    tiles: &Q8Tiles,
    out: &mut [f32],
    bytes: &mut [u8],
    scales: &mut [f32],
) {
    let width = tiles.n_groups * GROUP;
    let sps = scales_per_block(dtype);
    let per_row = tiles.nb * sps;
    let (scales, mins) = scales.split_at_mut(per_row);
    for (r, wr) in w.chunks_exact(row_bytes).enumerate() {
        let off = unpack_row(dtype, wr, bytes, scales, mins);
        let mins = if has_mins(dtype) {
            Some(&mins[..per_row])
        } else {
            None
        };
        row_scalar(
            bytes,
            scales,
            mins,
            sps,
            off,
            tiles.scales_per_superblock(dtype),
            tiles,
            &mut out[r * width..(r + 1) * width],
        );
    }
}

/// One unpacked row times every token of `tiles`. With `per_sb` the block terms are summed in
/// units of the super-block's activation scale and multiplied by it at the super-block's end:
/// Σ_sb d_a·(Σ_b s_b·v_b − m_b·Σa_b), as the SIMD kernels do.
#[allow(clippy::too_many_arguments)]
fn row_scalar(
    bytes: &[u8],
    scales: &[f32],
    mins: Option<&[f32]>,
    sps: usize,
    off: i32,
    per_sb: bool,
    tiles: &Q8Tiles,
    out: &mut [f32],
) {
    let nb = tiles.nb;
    for g in 0..tiles.n_groups {
        for t in 0..GROUP {
            let mut acc = 0f32;
            // The current super-block's sum in units of its activation scale (per_sb).
            let mut acc_sb = 0f32;
            for b in 0..nb {
                let base = (g * nb + b) * QK * GROUP;
                // Integer sums over the block's two halves of 16.
                let mut s = [0i32; 2];
                for k in 0..QK / 4 {
                    for j in 0..4 {
                        let a = tiles.qs[base + (k * GROUP + t) * 4 + j] as i32;
                        s[k / 4] += bytes[b * QK + k * 4 + j] as i32 * a;
                    }
                }
                let sb = (g * nb + b) * GROUP + t;
                let da = tiles.d[sb];
                if per_sb {
                    if sps == 1 {
                        let v = s[0] + s[1] - off * tiles.isum[sb];
                        acc_sb += scales[b] * v as f32;
                        if let Some(m) = mins {
                            acc_sb -= m[b] * tiles.fsum[sb];
                        }
                    } else {
                        let is = [tiles.isum_lo[sb], tiles.isum_hi[sb]];
                        for h in 0..2 {
                            acc_sb += scales[2 * b + h] * (s[h] - off * is[h]) as f32;
                            if let Some(m) = mins {
                                acc_sb -= m[2 * b + h] * is[h] as f32;
                            }
                        }
                    }
                    if b % (QK_K / QK) == QK_K / QK - 1 {
                        acc += acc_sb * da;
                        acc_sb = 0.0;
                    }
                } else if sps == 1 {
                    let v = s[0] + s[1] - off * tiles.isum[sb];
                    acc += scales[b] * da * v as f32;
                    if let Some(m) = mins {
                        acc -= m[b] * tiles.dsum[sb];
                    }
                } else {
                    let is = [tiles.isum_lo[sb], tiles.isum_hi[sb]];
                    for h in 0..2 {
                        let v = s[h] - off * is[h];
                        acc += scales[2 * b + h] * da * v as f32;
                        if let Some(m) = mins {
                            acc -= m[2 * b + h] * (da * is[h] as f32);
                        }
                    }
                }
            }
            out[g * GROUP + t] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Calls `$f::<SPS, OFF, MINS, SB>(args)` for the run-time kind `(sps, has_offset,
    /// has_mins, per_superblock)` (sps is 1 or 2: `scales_per_block`): one copy of the row
    /// kernel per kind of weight, so that no branch on the kind is left in its per-block code
    /// and the accumulators of a kind without an offset start from zero rather than from
    /// copies (`gemm_speed`: Q4_K 150 → 159, Q6_K 134 → 143, Q4_0 157 → 169 G multiply-adds/s).
    /// Super-block scaling has copies for the K-quant kinds only (Q4_K/Q5_K: mins, Q6_K: two
    /// scales and an offset); any other kind takes the per-block copy, which is exact for
    /// tiles whose blocks repeat their super-block's scale.
    macro_rules! dispatch_kinds {
        ($f:ident, $kind:expr, ($($arg:expr),*)) => {
            match $kind {
                (1, false, true, true) => $f::<1, false, true, true>($($arg),*),
                (2, true, false, true) => $f::<2, true, false, true>($($arg),*),
                (2, false, true, true) => $f::<2, false, true, true>($($arg),*),
                (1, false, false, _) => $f::<1, false, false, false>($($arg),*),
                (1, false, true, _) => $f::<1, false, true, false>($($arg),*),
                (1, true, false, _) => $f::<1, true, false, false>($($arg),*),
                (1, true, true, _) => $f::<1, true, true, false>($($arg),*),
                (_, false, false, _) => $f::<2, false, false, false>($($arg),*),
                (_, false, true, _) => $f::<2, false, true, false>($($arg),*),
                (_, true, false, _) => $f::<2, true, false, false>($($arg),*),
                (_, true, true, _) => $f::<2, true, true, false>($($arg),*),
            }
        };
    }

    macro_rules! row_kernel {
        ($name:ident, $features:literal, $dot:ident, $pairs:literal) => {
            /// Four unpacked rows (`bytes`: [4, cols], `scales`: [4, nb]) times every group of
            /// eight tokens: `out[j · width + t]`. Each activation load serves the four rows;
            /// two integer accumulators per row keep eight product chains in flight. With
            /// `$pairs` (AVX-512: 32 vector registers) two token groups go together, so each
            /// weight broadcast serves sixteen tokens: the loads per `vpdpbusd` drop from 10/8
            /// to 12/16.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $name(
                bytes: &[u8],
                scales: &[f32],
                mins: Option<&[f32]>,
                sps: usize,
                off: i32,
                per_sb: bool,
                tiles: &Q8Tiles,
                out: &mut [f32],
                width: usize,
            ) {
                // One copy of the loop per kind of weight (`dispatch_kinds`): 1.1B Q5_K_M
                // pp512 at one thread 109.9 → 114.4 tok/s (A/B, medians of 5).
                // SAFETY: as `groups`' contract (the caller's).
                unsafe {
                    dispatch_kinds!(
                        groups,
                        (sps, off != 0, mins.is_some(), per_sb),
                        (bytes, scales, mins, off, tiles, out, width)
                    )
                };

                /// Every token group, two at a time where `$pairs`.
                #[target_feature(enable = $features)]
                #[inline]
                unsafe fn groups<
                    const SPS: usize,
                    const OFF: bool,
                    const MINS: bool,
                    const SB: bool,
                >(
                    bytes: &[u8],
                    scales: &[f32],
                    mins: Option<&[f32]>,
                    off: i32,
                    tiles: &Q8Tiles,
                    out: &mut [f32],
                    width: usize,
                ) {
                    let mins = mins.unwrap_or(&[]);
                    let mut g = 0;
                    // SAFETY: as `inner`'s contract, for groups g..g+G < n_groups.
                    unsafe {
                        if $pairs {
                            while g + 2 <= tiles.n_groups {
                                inner::<2, SPS, OFF, MINS, SB>(
                                    g, bytes, scales, mins, off, tiles, out, width,
                                );
                                g += 2;
                            }
                        }
                        while g < tiles.n_groups {
                            inner::<1, SPS, OFF, MINS, SB>(
                                g, bytes, scales, mins, off, tiles, out, width,
                            );
                            g += 1;
                        }
                    }
                }

                /// Token groups g0..g0+G; `SPS` scales per block, an integer offset (`OFF`,
                /// `off` ≠ 0) and mins (`MINS`: `mins` holds them). With `SB` (tiles from
                /// Q8_K rows, whole super-blocks) a super-block's terms are summed in units of
                /// its activation scale d_a, which multiplies them once at its end, into `out`:
                /// out = Σ_sb d_a·Σ_b (s_b·v_b − m_b·Σa_b) — no d_a·s_b product per block.
                #[target_feature(enable = $features)]
                #[inline]
                #[allow(clippy::too_many_arguments)]
                unsafe fn inner<
                    const G: usize,
                    const SPS: usize,
                    const OFF: bool,
                    const MINS: bool,
                    const SB: bool,
                >(
                    g0: usize,
                    bytes: &[u8],
                    scales: &[f32],
                    mins: &[f32],
                    off: i32,
                    tiles: &Q8Tiles,
                    out: &mut [f32],
                    width: usize,
                ) {
                    let nb = tiles.nb;
                    let cols = nb * QK;
                    // −off·Σa = −(Σa << log2 off): off is 8 or 128.
                    let shift = _mm_cvtsi32_si128(off.trailing_zeros() as i32);
                    let mut acc = [[_mm256_setzero_ps(); G]; 4];
                    // The activations' integer sums whose −off multiple starts each half's
                    // sum (none without an offset; one for the whole block; Q6_K one per half).
                    let offset_sums: [Option<*const i32>; 2] = match (OFF, SPS) {
                        (false, _) => [None, None],
                        (_, 1) => [Some(tiles.isum.as_ptr()), None],
                        _ => [Some(tiles.isum_lo.as_ptr()), Some(tiles.isum_hi.as_ptr())],
                    };
                    for b in 0..nb {
                        // SAFETY: `fill` sized qs/d/sums for n_groups × nb blocks of 8 tokens;
                        // `bytes` holds 4·nb·32 bytes and `scales` 4·nb (two per block with
                        // sps = 2), g0 + G ≤ n_groups; `out` holds 4 rows of `width` ≥
                        // n_groups·8 values (the SB flush).
                        unsafe {
                            let qa: [*const i8; G] = std::array::from_fn(|gi| {
                                tiles.qs.as_ptr().add(((g0 + gi) * nb + b) * QK * GROUP)
                            });
                            // s[j][0]: elements 0..16 of the block, s[j][1]: 16..32 (the
                            // halves that Q6_K scales apart). With one scale per block and an
                            // offset (Q4_0: u = q + 8, Q8_0: q + 128), the first half starts
                            // from the offset term −off·Σa of its tokens rather than taking
                            // it in an add per row afterwards; Q6_K (u = q + 32, a scale per
                            // half) starts each half from its own.
                            // Plain loops, no closure: a closure here could be compiled out
                            // of line, a call per block (perf: 11 % of the kernel).
                            let mut s = [[[_mm256_setzero_si256(); G]; 2]; 4];
                            for (h, p) in offset_sums.into_iter().enumerate() {
                                let Some(p) = p else { continue };
                                for gi in 0..G {
                                    let sb = ((g0 + gi) * nb + b) * GROUP;
                                    let v = _mm256_sub_epi32(
                                        _mm256_setzero_si256(),
                                        _mm256_sll_epi32(
                                            _mm256_loadu_si256(p.add(sb).cast()),
                                            shift,
                                        ),
                                    );
                                    for sj in s.iter_mut() {
                                        sj[h][gi] = v;
                                    }
                                }
                            }
                            for k in 0..QK / 8 {
                                let a: [[__m256i; G]; 2] = std::array::from_fn(|h| {
                                    std::array::from_fn(|gi| {
                                        _mm256_loadu_si256(
                                            qa[gi].add((k + 4 * h) * GROUP * 4).cast(),
                                        )
                                    })
                                });
                                for j in 0..4 {
                                    let wp = bytes.as_ptr().add(j * cols + b * QK + k * 4);
                                    for h in 0..2 {
                                        let wv = _mm256_set1_epi32(std::ptr::read_unaligned(
                                            wp.add(16 * h).cast::<i32>(),
                                        ));
                                        for gi in 0..G {
                                            s[j][h][gi] = $dot(s[j][h][gi], wv, a[h][gi]);
                                        }
                                    }
                                }
                            }
                            for gi in 0..G {
                                let sb = ((g0 + gi) * nb + b) * GROUP;
                                let da = _mm256_loadu_ps(tiles.d.as_ptr().add(sb));
                                if SPS == 1 {
                                    for j in 0..4 {
                                        let v = _mm256_add_epi32(s[j][0][gi], s[j][1][gi]);
                                        let sw = _mm256_set1_ps(*scales.get_unchecked(j * nb + b));
                                        let sc = if SB { sw } else { _mm256_mul_ps(da, sw) };
                                        acc[j][gi] =
                                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), sc, acc[j][gi]);
                                    }
                                    // Weights with mins (Q4_K): − m·d_a·Σa, in floats (SB:
                                    // − m·Σa, d_a comes at the super-block's end).
                                    if MINS {
                                        let sums = if SB { &tiles.fsum } else { &tiles.dsum };
                                        let dsum = _mm256_loadu_ps(sums.as_ptr().add(sb));
                                        for j in 0..4 {
                                            acc[j][gi] = _mm256_fnmadd_ps(
                                                _mm256_set1_ps(*mins.get_unchecked(j * nb + b)),
                                                dsum,
                                                acc[j][gi],
                                            );
                                        }
                                    }
                                } else {
                                    // A scale per half (Q6_K, Q3_K; Q2_K with a min per half:
                                    // − m·d_a·Σa over the half, SB: − m·Σa).
                                    let half_sums = if MINS {
                                        [tiles.isum_lo.as_ptr(), tiles.isum_hi.as_ptr()].map(|p| {
                                            let v = _mm256_cvtepi32_ps(_mm256_loadu_si256(
                                                p.add(sb).cast(),
                                            ));
                                            if SB {
                                                v
                                            } else {
                                                _mm256_mul_ps(da, v)
                                            }
                                        })
                                    } else {
                                        [_mm256_setzero_ps(); 2]
                                    };
                                    for j in 0..4 {
                                        for h in 0..2 {
                                            let i = (j * nb + b) * 2 + h;
                                            let sw = _mm256_set1_ps(*scales.get_unchecked(i));
                                            let sc = if SB { sw } else { _mm256_mul_ps(da, sw) };
                                            acc[j][gi] = _mm256_fmadd_ps(
                                                _mm256_cvtepi32_ps(s[j][h][gi]),
                                                sc,
                                                acc[j][gi],
                                            );
                                            if MINS {
                                                acc[j][gi] = _mm256_fnmadd_ps(
                                                    _mm256_set1_ps(*mins.get_unchecked(i)),
                                                    half_sums[h],
                                                    acc[j][gi],
                                                );
                                            }
                                        }
                                    }
                                }
                            }
                            // The end of a super-block: out += d_a·acc (out starts from the
                            // first), and the next one sums from zero.
                            if SB && b % (QK_K / QK) == QK_K / QK - 1 {
                                for gi in 0..G {
                                    let da = _mm256_loadu_ps(
                                        tiles.d.as_ptr().add(((g0 + gi) * nb + b) * GROUP),
                                    );
                                    for j in 0..4 {
                                        let o = out.as_mut_ptr().add(j * width + (g0 + gi) * GROUP);
                                        let prev = if b < QK_K / QK {
                                            _mm256_setzero_ps()
                                        } else {
                                            _mm256_loadu_ps(o)
                                        };
                                        _mm256_storeu_ps(o, _mm256_fmadd_ps(acc[j][gi], da, prev));
                                        acc[j][gi] = _mm256_setzero_ps();
                                    }
                                }
                            }
                        }
                    }
                    if !SB {
                        for j in 0..4 {
                            for gi in 0..G {
                                // SAFETY: out holds 4 rows of `width` ≥ n_groups·8 values.
                                unsafe {
                                    _mm256_storeu_ps(
                                        out.as_mut_ptr().add(j * width + (g0 + gi) * GROUP),
                                        acc[j][gi],
                                    )
                                };
                            }
                        }
                    }
                }
            }
        };
    }

    /// acc + Σ u8·i8 over each 4-byte group (`vpdpbusd`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_vnni(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }

    /// acc + Σ u8·i8 over each 4-byte group, on AVX2: pairs to i16 (`vpmaddubsw`; with
    /// u ≤ 255 and |s| ≤ 128 a pair can reach 65280 and saturate, so Q8_0 weights would be
    /// wrong here — the caller only takes this path for Q4_0, u ≤ 15), then to i32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_avx2(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
        _mm256_add_epi32(acc, p)
    }

    row_kernel!(
        row_vnni,
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        dot_vnni,
        true
    );
    row_kernel!(row_avx2, "avx2,fma,f16c", dot_avx2, false);

    /// f16 → f32 for a row, eight at a time with F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn f16_row(src: &[u8], dst: &mut [f32]) {
        let n = dst.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: src holds n f16 (2n bytes), dst n f32.
            unsafe {
                _mm256_storeu_ps(
                    dst.as_mut_ptr().add(i),
                    _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(2 * i).cast())),
                )
            };
            i += 8;
        }
        for j in i..n {
            dst[j] = f16_le([src[2 * j], src[2 * j + 1]]);
        }
    }

    /// Four f32 rows (`[4, cols]`) times one tile of eight tokens (`[cols, 8]`): res[j][t].
    /// Two accumulators per row (even and odd k) keep eight FMA chains in flight.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows4_f(
        rows: &[f32],
        cols: usize,
        tile: &[f32],
        res: &mut [[f32; GROUP]; 4],
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let rp = rows.as_ptr();
        let tp = tile.as_ptr();
        let mut k = 0;
        while k + 2 <= cols {
            // SAFETY: k + 1 < cols; rows holds 4·cols values and the tile cols·8.
            unsafe {
                let x0 = _mm256_loadu_ps(tp.add(k * GROUP));
                let x1 = _mm256_loadu_ps(tp.add((k + 1) * GROUP));
                for j in 0..4 {
                    acc[j][0] =
                        _mm256_fmadd_ps(_mm256_set1_ps(*rp.add(j * cols + k)), x0, acc[j][0]);
                    acc[j][1] =
                        _mm256_fmadd_ps(_mm256_set1_ps(*rp.add(j * cols + k + 1)), x1, acc[j][1]);
                }
            }
            k += 2;
        }
        if k < cols {
            // SAFETY: k < cols.
            unsafe {
                let x0 = _mm256_loadu_ps(tp.add(k * GROUP));
                for j in 0..4 {
                    acc[j][0] =
                        _mm256_fmadd_ps(_mm256_set1_ps(*rp.add(j * cols + k)), x0, acc[j][0]);
                }
            }
        }
        for j in 0..4 {
            // SAFETY: res[j] holds 8 floats.
            unsafe { _mm256_storeu_ps(res[j].as_mut_ptr(), _mm256_add_ps(acc[j][0], acc[j][1])) };
        }
    }
}

/// f32 activations of up to `n_tok` tokens interleaved for [`gemm_rows_f`]: `x[g][k][t]`
/// (eight tokens' element k side by side; zeros for padding tokens).
#[derive(Debug, Clone, Default)]
pub struct F32Tiles {
    pub n_tok: usize,
    pub n_groups: usize,
    pub cols: usize,
    x: Vec<f32>,
}

impl F32Tiles {
    /// Interleaves `x` (`[n, cols]`); allocates only when growing.
    pub fn build(&mut self, x: &[f32], n: usize, cols: usize) {
        let ng = n.div_ceil(GROUP);
        self.n_tok = n;
        self.n_groups = ng;
        self.cols = cols;
        self.x.resize(ng * cols * GROUP, 0.0);
        for g in 0..ng {
            let tile = &mut self.x[g * cols * GROUP..(g + 1) * cols * GROUP];
            for t in 0..GROUP {
                let tok = g * GROUP + t;
                if tok < n {
                    for (k, v) in x[tok * cols..(tok + 1) * cols].iter().enumerate() {
                        tile[k * GROUP + t] = *v;
                    }
                } else {
                    for k in 0..cols {
                        tile[k * GROUP + t] = 0.0;
                    }
                }
            }
        }
    }
}

/// Rows of F32/F16/BF16 weights times every token of `tiles`: `out[r · n_groups·8 + t]`.
/// Four rows at a time are converted to f32 into `rows_f32` (≥ 4·cols) and multiplied with
/// each group of eight tokens: per element, one load of the eight tokens' values serves four
/// rows' broadcast weights.
pub fn gemm_rows_f(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    tiles: &F32Tiles,
    out: &mut [f32],
    rows_f32: &mut [f32],
) -> bool {
    let cols = tiles.cols;
    if !crate::types::has_gemm_f(isa, dtype) || row_bytes == 0 || !w.len().is_multiple_of(row_bytes)
    {
        return false;
    }
    if dtype.bytes_for(cols as u64).ok() != Some(row_bytes as u64) || rows_f32.len() < 4 * cols {
        return false;
    }
    let n_rows = w.len() / row_bytes;
    let width = tiles.n_groups * GROUP;
    if out.len() < n_rows * width {
        return false;
    }
    let mut r = 0;
    while r < n_rows {
        let m = (n_rows - r).min(4);
        for j in 0..m {
            let src = &w[(r + j) * row_bytes..(r + j + 1) * row_bytes];
            let dst = &mut rows_f32[j * cols..(j + 1) * cols];
            #[cfg(target_arch = "x86_64")]
            if dtype == DType::F16 {
                // SAFETY: isa ≥ Avx2 (checked by `has_gemm_f`) implies F16C; src holds cols f16.
                unsafe { x86::f16_row(src, dst) };
                continue;
            }
            if crate::types::dequantize_row(dtype, src, dst).is_err() {
                return false;
            }
        }
        for j in m..4 {
            rows_f32[j * cols..(j + 1) * cols].fill(0.0);
        }
        let mut res = [[0f32; GROUP]; 4];
        for g in 0..tiles.n_groups {
            let tile = &tiles.x[g * cols * GROUP..(g + 1) * cols * GROUP];
            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY: `has_gemm_f` checked isa ≥ Avx2 (AVX2+FMA present); sizes checked.
                unsafe { x86::rows4_f(&rows_f32[..4 * cols], cols, tile, &mut res) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                // `has_gemm_f` is false off x86_64: never reached.
                let _ = (tile, &mut res);
                return false;
            }
            #[allow(unreachable_code)]
            for j in 0..m {
                out[(r + j) * width + g * GROUP..(r + j) * width + (g + 1) * GROUP]
                    .copy_from_slice(&res[j]);
            }
        }
        r += m;
    }
    true
}

/// The scalar twin of [`gemm_rows_f`].
pub fn gemm_rows_f_scalar(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    tiles: &F32Tiles,
    out: &mut [f32],
    row: &mut [f32],
) {
    let cols = tiles.cols;
    let width = tiles.n_groups * GROUP;
    for (r, src) in w.chunks_exact(row_bytes).enumerate() {
        if crate::types::dequantize_row(dtype, src, &mut row[..cols]).is_err() {
            out[r * width..(r + 1) * width].fill(f32::NAN);
            continue;
        }
        for g in 0..tiles.n_groups {
            for t in 0..GROUP {
                let mut s = 0f32;
                for k in 0..cols {
                    s += row[k] * tiles.x[(g * cols + k) * GROUP + t];
                }
                out[r * width + g * GROUP + t] = s;
            }
        }
    }
}
