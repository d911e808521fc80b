//! AVX2 and AVX-512 VNNI dot-product kernels (x86_64). Each is tested against its scalar twin
//! in `tests/simd_vs_scalar.rs`.
//!
//! The integer kernels multiply int8 weights by int8 activations the way ggml does: a signed
//! product is formed as |w| · (a·sign(w)) so that the unsigned×signed instructions apply —
//! `vpmaddubsw` + `vpmaddwd` on AVX2, or one `vpdpbusd` with AVX-512 VNNI (on 256-bit vectors,
//! AVX512VL). Every block's integer sum is scaled by d_w·d_a and accumulated in f32.
//! Up to four activation rows are processed per pass over the weights, so a weight block is
//! unpacked once for several tokens (the matrix-matrix case). Which kernels each type has is
//! [`kernels`]; `crate::types` points every type's table entry there.

use std::arch::x86_64::*;

use super::rows::{gather, Rows, RowsFn};
use crate::act::{ActRef, Q8KRow, Q8Row};
use crate::blocks::*;
use crate::cpu::Isa;
use half::f16;

/// How far past the next row group (bytes) the eight-row kernels prefetch.
const PF8: usize = 4096;

/// The sum of the eight lanes: halves, then pairs (`ops::hsum8` is the scalar order).
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The f16 scales at `p`, `p + rb`, `p + 2rb` and `p + 3rb` (four rows' blocks) as the four
/// words of an integer, put together in general registers. Inserted into a vector one by one
/// (`vpinsrw`) they cost eight vector operations per eight rows, in a kernel bound by its
/// vector operations; the integer units are idle. In `asm!` because LLVM turns the same Rust
/// into vector inserts again.
///
/// # Safety
/// The four two-byte reads must be in bounds.
#[inline(always)]
unsafe fn scales4(p: *const u8, rb: usize) -> i64 {
    let v: i64;
    // SAFETY: the caller's contract; the asm only reads those four words.
    unsafe {
        std::arch::asm!(
            "movzx {v:e}, word ptr [{p}]",
            "movzx {t:e}, word ptr [{p} + {rb}]",
            "shl {t}, 16",
            "or {v}, {t}",
            "movzx {t:e}, word ptr [{p} + {rb} * 2]",
            "shl {t}, 32",
            "or {v}, {t}",
            "lea {t}, [{rb} + {rb} * 2]",
            "movzx {t:e}, word ptr [{p} + {t}]",
            "shl {t}, 48",
            "or {v}, {t}",
            p = in(reg) p,
            rb = in(reg) rb,
            v = out(reg) v,
            t = out(reg) _,
            options(pure, readonly, nostack)
        );
    }
    v
}

/// The layout constants of Q4_K (`FIVE` = false) and Q5_K blocks for the eight-row kernel:
/// bytes per block and where the nibbles start (after the 16-byte header, and Q5_K's 32 bytes
/// of fifth bits). Associated constants rather than `let`s: captured by the kernel's closures,
/// a `let` was not folded and the kernel ran at half speed (measured: 30 → 16 GB/s from L2).
struct K4<const FIVE: bool>;
impl<const FIVE: bool> K4<FIVE> {
    const BB: usize = if FIVE {
        std::mem::size_of::<BlockQ5K>()
    } else {
        std::mem::size_of::<BlockQ4K>()
    };
    const QS: usize = if FIVE { 48 } else { 16 };
}
const _: () = assert!(K4::<false>::BB == 144 && K4::<true>::BB == 176);

/// The row kernels each weight type has on x86_64 (AVX2, AVX-512 VNNI, AVX-512 VBMI), for the
/// type table (`crate::types`): `None` where there are none. Every function checks `isa`
/// itself against what its kernels need (the caller guarantees at least AVX2).
pub mod kernels {
    use super::*;

    pub const F32: Option<RowsFn> = Some(f32_rows);
    pub const F16: Option<RowsFn> = Some(f16_rows);
    pub const BF16: Option<RowsFn> = Some(bf16_rows);
    pub const Q8_0: Option<RowsFn> = Some(q8_0_rows);
    pub const Q4_0: Option<RowsFn> = Some(q4_0_rows);
    pub const Q4_1: Option<RowsFn> = Some(q4_1_rows);
    pub const Q5_0: Option<RowsFn> = Some(q5_0_rows);
    pub const Q5_1: Option<RowsFn> = Some(q5_1_rows);
    pub const Q2_K: Option<RowsFn> = Some(q2_k_rows);
    pub const Q3_K: Option<RowsFn> = Some(q3_k_rows);
    pub const Q4_K: Option<RowsFn> = Some(q4_k_rows);
    pub const Q5_K: Option<RowsFn> = Some(q5_k_rows);
    pub const Q6_K: Option<RowsFn> = Some(q6_k_rows);
    pub const Q8_K: Option<RowsFn> = None;
    pub const Q8_0_48: Option<RowsFn> = Some(sparse_rows::<BlockQ8_0S>);
    pub const Q4_0_48: Option<RowsFn> = Some(sparse_rows::<BlockQ4_0S>);
    pub const Q8_0_24: Option<RowsFn> = Some(sparse_rows::<BlockQ8_0P>);
    pub const Q4_0_24: Option<RowsFn> = Some(sparse_rows::<BlockQ4_0P>);
    pub const Q8_0_U: Option<RowsFn> = Some(pooled_rows);
}

/// The rest of the rows, up to four tokens per pass, with `$f` from the AVX-512 VNNI or the
/// AVX2 build of the kernels: a float type (`frows`, the activations picked by `$pick`) or a
/// block type (`rows`, weight rows viewed as `$blk`).
macro_rules! generic_rows {
    (frows, $r:ident, $pick:ident, $f:ident) => {
        if $r.isa >= Isa::Avx512Vnni {
            // SAFETY: `isa` comes from run-time detection (`cpu::detect`), which reports
            // Avx512Vnni only when AVX2, FMA, F16C, AVX512F/BW/VL and AVX512-VNNI are present;
            // `Rows::check` checked that every activation row has a weight row's length.
            $r.each($pick, |w, x, o| unsafe { vnni::$f(w, x, o) })
        } else {
            // SAFETY: as above, for Avx2 (AVX2, FMA and F16C: the caller's guarantee).
            $r.each($pick, |w, x, o| unsafe { avx2::$f(w, x, o) })
        }
    };
    (rows, $r:ident, $pick:ident, $blk:ty, $f:ident) => {
        if $r.isa >= Isa::Avx512Vnni {
            // SAFETY: as for `frows`; the rows are whole `$blk` blocks (`Rows::check`), and
            // every activation row holds as many quants, scales and sums.
            $r.each($pick, |w, a, o| unsafe {
                vnni::$f(as_blocks::<$blk>(w).unwrap_or(&[]), a, o)
            })
        } else {
            // SAFETY: as above, for Avx2.
            $r.each($pick, |w, a, o| unsafe {
                avx2::$f(as_blocks::<$blk>(w).unwrap_or(&[]), a, o)
            })
        }
    };
}

/// One token, F32/BF16 weights: four rows at a time (`$r4`), then the rest row by row.
macro_rules! float_r4 {
    ($r:ident, $r4:ident) => {
        if let [ActRef::F32(x)] = $r.acts {
            let (rb, vnni) = ($r.row_bytes, $r.isa >= Isa::Avx512Vnni);
            while $r.first_row + 4 <= $r.n_rows {
                let i = $r.first_row;
                let (wr, o) = (&$r.w[i * rb..(i + 4) * rb], &mut $r.out[i..i + 4]);
                // SAFETY: run-time detected features (see `generic_rows`); `Rows::check` checked
                // that x has as many elements as a row.
                unsafe {
                    if vnni {
                        vnni::$r4(wr, rb, x, o)
                    } else {
                        avx2::$r4(wr, rb, x, o)
                    }
                }
                $r.first_row += 4;
            }
        }
    };
}

fn f32_rows(r: &mut Rows<'_, '_>) -> bool {
    float_r4!(r, f32_r4);
    r.first_row == r.n_rows || generic_rows!(frows, r, pick_f32, f32_n)
}

fn bf16_rows(r: &mut Rows<'_, '_>) -> bool {
    float_r4!(r, bf16_r4);
    r.first_row == r.n_rows || generic_rows!(frows, r, pick_f32, bf16_n)
}

/// F16 weights take f16 activations and go row by row (the row streams; the activation
/// stays in L1).
fn f16_rows(r: &mut Rows<'_, '_>) -> bool {
    generic_rows!(frows, r, pick_f16, f16_n)
}

/// Q8_0: with AVX-512 VNNI and one token, each row read as one stream (`vbmi::q8_0_rows`);
/// else up to four tokens a pass, row by row.
fn q8_0_rows(r: &mut Rows<'_, '_>) -> bool {
    if let (true, [ActRef::Q8(q)]) = (r.isa >= Isa::Avx512Vnni, r.acts) {
        // SAFETY: Isa::Avx512Vnni is only reported when AVX-512 F/BW/VL/VNNI, AVX2, FMA and
        // F16C are present; `Rows::check` checked that `w` is n_rows whole rows of whole Q8_0
        // blocks, that `out` holds a value per row and that the activation holds as many
        // quants, scales and sums.
        unsafe { vbmi::q8_0_rows(r.w, r.row_bytes, q, r.out) };
        return true;
    }
    generic_rows!(rows, r, pick_q8, BlockQ8_0, q8_0_n)
}

fn q4_1_rows(r: &mut Rows<'_, '_>) -> bool {
    generic_rows!(rows, r, pick_q8, BlockQ4_1, q4_1_n)
}

fn q5_0_rows(r: &mut Rows<'_, '_>) -> bool {
    generic_rows!(rows, r, pick_q8, BlockQ5_0, q5_0_n)
}

fn q5_1_rows(r: &mut Rows<'_, '_>) -> bool {
    generic_rows!(rows, r, pick_q8, BlockQ5_1, q5_1_n)
}

fn q2_k_rows(r: &mut Rows<'_, '_>) -> bool {
    generic_rows!(rows, r, pick_q8k, BlockQ2K, q2_k_n)
}

fn q3_k_rows(r: &mut Rows<'_, '_>) -> bool {
    generic_rows!(rows, r, pick_q8k, BlockQ3K, q3_k_n)
}

/// Q4_0: with VBMI and one token (activation regrouped), each row read as one stream
/// (`vbmi`); else up to four tokens eight rows at a time; the rest row by row.
fn q4_0_rows(r: &mut Rows<'_, '_>) -> bool {
    if let (true, [ActRef::Q8(q)]) = (r.isa >= Isa::Avx512Vbmi, r.acts) {
        if q.qp.len() == r.n / (8 * QK) * 8 * QK {
            // SAFETY: Isa::Avx512Vbmi is only reported when AVX-512 F/BW/VL/VNNI/VBMI, AVX2,
            // FMA and F16C are present; `Rows::check` checked that `w` is n_rows whole rows of
            // whole Q4_0 blocks, that `out` holds a value per row and that the activation
            // holds as many quants, scales and sums; `qp` covers every whole group of eight
            // blocks.
            unsafe { vbmi::q4_0_rows(r.w, r.row_bytes, q, r.out) };
            return true;
        }
    }
    let (nt, rb, vnni) = (r.nt(), r.row_bytes, r.isa >= Isa::Avx512Vnni);
    if let (true, Some(qs)) = (nt <= 4, gather(r.acts, pick_q8)) {
        while r.first_row + 8 <= r.n_rows {
            let i = r.first_row;
            let (wr, o) = (&r.w[i * rb..(i + 8) * rb], &mut r.out[i * nt..(i + 8) * nt]);
            // SAFETY: run-time detected features (see `generic_rows`); `Rows::check` checked
            // that the eight rows are whole Q4_0 blocks and that every activation row holds as
            // many quants.
            unsafe {
                if vnni {
                    vnni::q4_0_r8(wr, rb, &qs[..nt], o)
                } else {
                    avx2::q4_0_r8(wr, rb, &qs[..nt], o)
                }
            }
            r.first_row += 8;
        }
    }
    r.first_row == r.n_rows || generic_rows!(rows, r, pick_q8, BlockQ4_0, q4_0_n)
}

/// Q4_K and Q5_K (`FIVE`): up to four tokens eight rows at a time, the rest row by row.
fn k4_r8<const FIVE: bool>(r: &mut Rows<'_, '_>) {
    let (nt, rb, vnni) = (r.nt(), r.row_bytes, r.isa >= Isa::Avx512Vnni);
    let Some(qs) = gather(r.acts, pick_q8k).filter(|_| nt <= 4) else {
        return;
    };
    while r.first_row + 8 <= r.n_rows {
        let i = r.first_row;
        let (wr, o) = (&r.w[i * rb..(i + 8) * rb], &mut r.out[i * nt..(i + 8) * nt]);
        // SAFETY: run-time detected features (see `generic_rows`); `Rows::check` checked that
        // the eight rows are whole Q4_K (Q5_K) blocks and that every activation row holds as
        // many quants and group sums.
        unsafe {
            if vnni {
                vnni::q4_k_r8::<FIVE>(wr, rb, &qs[..nt], o)
            } else {
                avx2::q4_k_r8::<FIVE>(wr, rb, &qs[..nt], o)
            }
        }
        r.first_row += 8;
    }
}

/// Q4_K: with VBMI and one token regrouped, each row as one stream; else as Q5_K.
fn q4_k_rows(r: &mut Rows<'_, '_>) -> bool {
    if let (true, [ActRef::Q8K(q)]) = (r.isa >= Isa::Avx512Vbmi, r.acts) {
        if q.qp.len() == r.n && q.ssum.len() == r.n / 32 {
            // SAFETY: as for Q4_0's one-stream kernel, with Q4_K blocks and a Q8_K activation
            // regrouped for the whole row.
            unsafe { vbmi::q4_k_rows(r.w, r.row_bytes, q, r.out) };
            return true;
        }
    }
    k4_r8::<false>(r);
    r.first_row == r.n_rows || generic_rows!(rows, r, pick_q8k, BlockQ4K, q4_k_n)
}

fn q5_k_rows(r: &mut Rows<'_, '_>) -> bool {
    k4_r8::<true>(r);
    r.first_row == r.n_rows || generic_rows!(rows, r, pick_q8k, BlockQ5K, q5_k_n)
}

/// Q6_K: with VBMI and one token, each row as one stream; else row by row.
fn q6_k_rows(r: &mut Rows<'_, '_>) -> bool {
    if let (true, [ActRef::Q8K(q)]) = (r.isa >= Isa::Avx512Vbmi, r.acts) {
        // SAFETY: as for Q4_0's one-stream kernel, with Q6_K blocks and a Q8_K activation.
        unsafe { vbmi::q6_k_rows(r.w, r.row_bytes, q, r.out) };
        return true;
    }
    generic_rows!(rows, r, pick_q8k, BlockQ6K, q6_k_n)
}

/// The sparse types ([`Sparse`]): with VBMI2 and up to four tokens, each row one stream of
/// super-blocks whose activations are compressed to the kept positions
/// (`vbmi::sparse_rows`); else every block of 32 expanded to its dense values by a byte
/// shuffle (`expand_ctl`) into the dense block kernels.
fn sparse_rows<B: Sparse>(r: &mut Rows<'_, '_>) -> bool {
    if let (true, Some(qs)) = (r.isa >= Isa::Avx512Vbmi, gather(r.acts, pick_q8)) {
        let (nt, rb, n_rows) = (r.nt(), r.row_bytes, r.n_rows);
        let w = r.w;
        let out = &mut *r.out;
        // SAFETY: Isa::Avx512Vbmi is only reported when AVX-512 F/BW/VL/VNNI/VBMI/VBMI2,
        // AVX2, FMA and F16C are present; `Rows::check` checked that `w` is n_rows
        // whole rows of whole super-blocks (`rb` bytes each), that `out` holds n_rows × nt
        // values and that every activation row holds as many quants and scales as a row has
        // elements.
        match nt {
            1 => unsafe { vbmi::sparse_rows::<B, 1>(w, rb, &qs, out) },
            2 => unsafe { vbmi::sparse_rows::<B, 2>(w, rb, &qs, out) },
            3 => unsafe { vbmi::sparse_rows::<B, 3>(w, rb, &qs, out) },
            4 => unsafe { vbmi::sparse_rows::<B, 4>(w, rb, &qs, out) },
            _ => return generic_rows!(rows, r, pick_q8, B, sparse_n),
        }
        r.first_row = n_rows;
        return true;
    }
    generic_rows!(rows, r, pick_q8, B, sparse_n)
}

/// The unstructured layout (`crate::pool`): with VBMI2 and up to four tokens, each row's
/// kept values expanded to their positions super-block by super-block straight from the pool
/// (`vbmi::pooled_rows`); else block by block through a byte shuffle into the dense block
/// kernels (`pooled_n`).
fn pooled_rows(r: &mut Rows<'_, '_>) -> bool {
    let n = r.n;
    if let (true, Some(qs)) = (r.isa >= Isa::Avx512Vbmi, gather(r.acts, pick_q8)) {
        let (nt, rb, n_rows) = (r.nt(), r.row_bytes, r.n_rows);
        let (w, out) = (r.w, &mut *r.out);
        // SAFETY: Isa::Avx512Vbmi is only reported when AVX-512 F/BW/VL/VNNI/VBMI/VBMI2,
        // POPCNT, AVX2, FMA and F16C are present; `Rows::check` checked that `w` is n_rows
        // whole rows of `rb` bytes holding n weights each, that `out` holds n_rows × nt
        // values and that every activation row holds as many quants and scales as a row has
        // elements.
        match nt {
            1 => unsafe { vbmi::pooled_rows::<1>(w, rb, n, &qs, out) },
            2 => unsafe { vbmi::pooled_rows::<2>(w, rb, n, &qs, out) },
            3 => unsafe { vbmi::pooled_rows::<3>(w, rb, n, &qs, out) },
            4 => unsafe { vbmi::pooled_rows::<4>(w, rb, n, &qs, out) },
            _ => return pooled_generic(r, n),
        }
        r.first_row = n_rows;
        return true;
    }
    pooled_generic(r, n)
}

/// [`pooled_rows`] without VBMI2: row by row, up to four tokens a pass.
fn pooled_generic(r: &mut Rows<'_, '_>, n: usize) -> bool {
    if r.isa >= Isa::Avx512Vnni {
        // SAFETY: as in `generic_rows`; every row holds n weights and every activation row as
        // many quants, scales and sums (`Rows::check`).
        r.each(pick_q8, |w, a, o| unsafe { vnni::pooled_n(w, n, a, o) })
    } else {
        // SAFETY: as above, for Avx2.
        r.each(pick_q8, |w, a, o| unsafe { avx2::pooled_n(w, n, a, o) })
    }
}

/// `vpshufb` controls that expand a block's kept values (four of every eight; a 2:4 block's
/// too) to its 32 positions: entry `[c][m]` is the eight control bytes of group c (elements
/// 8c..8c + 8) under mask byte m —
/// for each set bit the kept value's index (4c + its rank among the set bits: the group's
/// four values follow the previous groups' in the broadcast 16 bytes), 0x80 (a zero) for
/// each clear bit. A mask byte without exactly four bits set is a malformed block (the loader
/// refuses it); its controls still index within the vector.
const fn expand_table() -> [[u64; 256]; 4] {
    let mut t = [[0u64; 256]; 4];
    let mut c = 0;
    while c < 4 {
        let mut m = 0;
        while m < 256 {
            // The ranks of `pool::expand8`, moved on by 4c (0x80 stays 0x80).
            let (e, mut v, mut i) = (crate::pool::expand8(m), 0u64, 0);
            while i < 8 {
                let b = (e >> (8 * i)) & 0xFF;
                let byte = if b == 0x80 {
                    0x80
                } else {
                    (4 * c as u64 + b) & 0x0F
                };
                v |= byte << (8 * i);
                i += 1;
            }
            t[c][m] = v;
            m += 1;
        }
        c += 1;
    }
    t
}
static EXPAND: [[u64; 256]; 4] = expand_table();

/// Block s's 16 kept values u of a `Q4_0_4:8` super-block's 32 nibble bytes (blocks 0, 1: the
/// low nibbles of bytes 0..16, 16..32; blocks 2, 3: the high nibbles).
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn nibbles16(qs: &[u8; 32], s: usize) -> __m128i {
    // SAFETY: 16 bytes from 0 or 16 of the 32.
    let raw = unsafe { _mm_loadu_si128(qs.as_ptr().add(16 * (s % 2)).cast()) };
    let v = if s < 2 { raw } else { _mm_srli_epi16(raw, 4) };
    _mm_and_si128(v, _mm_set1_epi8(0x0F))
}

/// The `vpshufb` control expanding a block's 16 kept values (broadcast to both 128-bit lanes)
/// to its 32 positions under keep-mask `m`.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn expand_ctl(m: u32) -> __m256i {
    let e = |c: usize| EXPAND[c][(m >> (8 * c)) as usize & 0xFF] as i64;
    _mm256_setr_epi64x(e(0), e(1), e(2), e(3))
}

fn pick_f32<'a>(a: &ActRef<'a>) -> Option<&'a [f32]> {
    match *a {
        ActRef::F32(x) => Some(x),
        _ => None,
    }
}
fn pick_f16<'a>(a: &ActRef<'a>) -> Option<&'a [f16]> {
    match *a {
        ActRef::F16(x) => Some(x),
        _ => None,
    }
}
fn pick_q8<'a>(a: &ActRef<'a>) -> Option<&'a Q8Row> {
    match *a {
        ActRef::Q8(x) => Some(x),
        _ => None,
    }
}
fn pick_q8k<'a>(a: &ActRef<'a>) -> Option<&'a Q8KRow> {
    match *a {
        ActRef::Q8K(x) => Some(x),
        _ => None,
    }
}

/// The kernels, written once and compiled twice: for AVX2 (`vpmaddubsw`) and for AVX-512
/// VNNI (`vpdpbusd`). `$mul_sum` turns 32 unsigned × 32 signed bytes into 8 int32 sums of
/// products; `$u8_ok` says whether it is exact for any unsigned byte (VNNI) or only for small
/// ones (AVX2's 16-bit pair sums saturate above 127·255).
macro_rules! kernels {
    ($modname:ident, $features:literal, $mul_sum:ident, $dp:ident, $dpw:ident, $u8_ok:literal) => {
        mod $modname {
            use super::*;

            /// A float row (`$load` gives 8 weights as f32) against 1–4 activation rows of
            /// `$xt` (`$xload` gives 8 as f32). No software prefetch: one row is one
            /// sequential stream, which the hardware prefetcher follows best (prefetching
            /// 256 bytes ahead cost 5–8 % with rows streamed from a mapped file).
            macro_rules! float_kernel {
                ($name:ident, $bytes:expr, $load:expr, $scalar:expr, $xt:ty, $xload:expr) => {
                    #[target_feature(enable = $features)]
                    pub(super) unsafe fn $name(w: &[u8], xs: &[&[$xt]], out: &mut [f32]) {
                        // The token count as a constant, so that the loops over tokens unroll
                        // and the accumulators stay in registers.
                        // One token: eight independent FMA chains (64 weights a pass), since
                        // with two the 4-cycle FMA latency, not the loads, bounded decode.
                        unsafe {
                            match xs.len() {
                                1 => inner::<1, 4>(w, xs, out),
                                2 => inner::<2, 2>(w, xs, out),
                                3 => inner::<3, 1>(w, xs, out),
                                _ => inner::<4, 1>(w, xs, out),
                            }
                        }

                        /// `N` tokens, `2K` accumulators per token, 16K weights per pass.
                        #[target_feature(enable = $features)]
                        unsafe fn inner<const N: usize, const K: usize>(
                            w: &[u8],
                            xs: &[&[$xt]],
                            out: &mut [f32],
                        ) {
                            let n = xs[0].len();
                            let wp = w.as_ptr();
                            let mut acc = [[_mm256_setzero_ps(); N]; 8];
                            let mut i = 0;
                            while i + 16 * K <= n {
                                for k in 0..2 * K {
                                    // SAFETY: i + 16K ≤ n elements, and w holds n elements
                                    // of $bytes.
                                    let wv: __m256 = unsafe { $load(wp.add((i + 8 * k) * $bytes)) };
                                    for t in 0..N {
                                        // SAFETY: every activation row has n elements.
                                        let xv = unsafe { $xload(xs[t].as_ptr().add(i + 8 * k)) };
                                        acc[k][t] = _mm256_fmadd_ps(wv, xv, acc[k][t]);
                                    }
                                }
                                i += 16 * K;
                            }
                            while i + 8 <= n {
                                // SAFETY: as above, for 8 elements.
                                let wv: __m256 = unsafe { $load(wp.add(i * $bytes)) };
                                for t in 0..N {
                                    let xv = unsafe { $xload(xs[t].as_ptr().add(i)) };
                                    acc[0][t] = _mm256_fmadd_ps(wv, xv, acc[0][t]);
                                }
                                i += 8;
                            }
                            for t in 0..N {
                                let mut v = acc[0][t];
                                for k in 1..2 * K {
                                    v = _mm256_add_ps(v, acc[k][t]);
                                }
                                let mut s = hsum(v);
                                for j in i..n {
                                    let c = &w[j * $bytes..(j + 1) * $bytes];
                                    s += $scalar(c) * f32::from(xs[t][j]);
                                }
                                out[t] = s;
                            }
                        }
                    }
                };
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn load_f32(p: *const u8) -> __m256 {
                unsafe { _mm256_loadu_ps(p.cast()) }
            }
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn load_f16(p: *const u8) -> __m256 {
                unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
            }
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn load_bf16(p: *const u8) -> __m256 {
                unsafe {
                    let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
                    _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
                }
            }
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn load_x32(p: *const f32) -> __m256 {
                unsafe { _mm256_loadu_ps(p) }
            }
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn load_x16(p: *const f16) -> __m256 {
                unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
            }
            float_kernel!(
                f32_n,
                4,
                load_f32,
                |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                f32,
                load_x32
            );
            // F16 weights with f16 activations (`ActKind::F16`).
            float_kernel!(
                f16_n,
                2,
                load_f16,
                |c: &[u8]| f16_le([c[0], c[1]]),
                f16,
                load_x16
            );
            float_kernel!(
                bf16_n,
                2,
                load_bf16,
                |c: &[u8]| bf16_le([c[0], c[1]]),
                f32,
                load_x32
            );

            /// Four rows of a float type against one activation row (the decode case):
            /// each activation vector is loaded once for four rows — with rows of 5632
            /// elements the f32 activation (22 KB) no longer stays in L1 beside the streaming
            /// weights, and reloading it for every row cost a third of the bandwidth. Two FMA
            /// chains per row; the group's bytes are prefetched as one linear stream, like the
            /// Q4_0 eight-row kernel's.
            macro_rules! float_rows4 {
                ($name:ident, $bytes:expr, $load:expr, $scalar:expr) => {
                    #[target_feature(enable = $features)]
                    pub(super) unsafe fn $name(w: &[u8], rb: usize, x: &[f32], out: &mut [f32]) {
                        let n = x.len();
                        debug_assert!(rb == n * $bytes && w.len() >= 4 * rb && out.len() >= 4);
                        let wp = w.as_ptr();
                        let xp = x.as_ptr();
                        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                        let mut i = 0;
                        while i + 16 <= n {
                            // 64 weights of the group consumed per step: prefetch as many
                            // bytes, the next group on (4·rb) plus PF8.
                            let ahead = wp.wrapping_add(4 * rb + 4 * i * $bytes + PF8);
                            for l in 0..$bytes {
                                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * l).cast());
                            }
                            // SAFETY: i + 16 ≤ n elements in x and in each of the four rows
                            // (rb = n·$bytes, checked by `dot_rows`).
                            unsafe {
                                let x0 = _mm256_loadu_ps(xp.add(i));
                                let x1 = _mm256_loadu_ps(xp.add(i + 8));
                                for r in 0..4 {
                                    let p = wp.add(r * rb + i * $bytes);
                                    acc[r][0] = _mm256_fmadd_ps($load(p), x0, acc[r][0]);
                                    acc[r][1] =
                                        _mm256_fmadd_ps($load(p.add(8 * $bytes)), x1, acc[r][1]);
                                }
                            }
                            i += 16;
                        }
                        for r in 0..4 {
                            let mut s = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
                            for j in i..n {
                                let c = &w[r * rb + j * $bytes..r * rb + (j + 1) * $bytes];
                                s += $scalar(c) * x[j];
                            }
                            out[r] = s;
                        }
                    }
                };
            }
            float_rows4!(f32_r4, 4, load_f32, |c: &[u8]| f32::from_le_bytes([
                c[0], c[1], c[2], c[3]
            ]));
            float_rows4!(bf16_r4, 2, load_bf16, |c: &[u8]| bf16_le([c[0], c[1]]));

            /// 32 signed int8 weights × 32 signed int8 activations → 8 int32 partial sums.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn mul_sum_i8(w: __m256i, a: __m256i) -> __m256i {
                let ax = _mm256_sign_epi8(w, w);
                let sy = _mm256_sign_epi8(a, w);
                $mul_sum(ax, sy)
            }

            /// [`blocks32`] with the token count as a constant (loops over tokens unroll) and
            /// as many accumulators per token as keep the FMA chains from bounding the loop.
            macro_rules! by_tokens {
                ($off:literal, $min:literal, $nb:expr, $unpack:expr, $dbits:expr, $mbits:expr, $a:expr, $out:expr) => {
                    match $a.len() {
                        1 => blocks32::<4, $off, 1, $min>($nb, $unpack, $dbits, $mbits, $a, $out),
                        2 => blocks32::<2, $off, 2, $min>($nb, $unpack, $dbits, $mbits, $a, $out),
                        3 => blocks32::<1, $off, 3, $min>($nb, $unpack, $dbits, $mbits, $a, $out),
                        _ => blocks32::<1, $off, 4, $min>($nb, $unpack, $dbits, $mbits, $a, $out),
                    }
                };
            }

            /// The shared loop of the 32-element block kernels: `unpack(b)` gives block b's
            /// 32 weights as int8, `dbits(b)` its f16 scale. Blocks go eight at a time: the
            /// eight weight scales are converted together and multiplied by the activation
            /// scales as one vector, and each block takes its lane with one permute (instead
            /// of a scalar convert–multiply–broadcast per block). `U` accumulators per token
            /// keep the FMA latency chain from bounding a single-token (decode) product.
            /// `MIN`: the blocks have a min, x = d·u + m (Q4_1, Q5_1), `mbits(b)` its f16;
            /// Σ m_b·d_a·Σa is added through the activation block sums like the offset.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn blocks32<const U: usize, const OFF: i32, const N: usize, const MIN: bool>(
                nb: usize,
                unpack: impl Fn(usize) -> __m256i,
                dbits: impl Fn(usize) -> u16,
                mbits: impl Fn(usize) -> u16,
                a: &[&Q8Row],
                out: &mut [f32],
            ) {
                // The token count as a constant: loops over tokens unroll, accumulators stay
                // in registers.
                let nt = N;
                let mut qa = [std::ptr::null::<i8>(); 4];
                let mut da = [std::ptr::null::<f32>(); 4];
                for t in 0..nt {
                    qa[t] = a[t].qs.as_ptr();
                    da[t] = a[t].d.as_ptr();
                }
                // OFF = 0: signed weights (|w|·sign trick). OFF > 0: unsigned weights u = q + OFF
                // straight into the u8×i8 product; the offset comes off once per eight blocks
                // through the activation block sums (Σ s_b·(Σ u·a − OFF·Σa)).
                let dot = |q: __m256i, t: usize, b: usize| -> __m256i {
                    // SAFETY: `dot_rows` checked that block b exists in every activation row.
                    let y = unsafe { _mm256_loadu_si256(qa[t].add(b * QK).cast()) };
                    if OFF == 0 && !MIN {
                        mul_sum_i8(q, y)
                    } else {
                        $mul_sum(q, y)
                    }
                };
                let mut corr = [_mm256_setzero_ps(); 4];
                let mut corr_tail = [0f32; 4];
                let lanes: [__m256i; 8] = std::array::from_fn(|k| _mm256_set1_epi32(k as i32));
                let mut acc = [[_mm256_setzero_ps(); 4]; U];
                let mut b = 0;
                while b + 8 <= nb {
                    // The eight f16 scales packed in two general-purpose registers (integer
                    // units, beside the vector work) rather than through a stack buffer, whose
                    // eight small stores could not be forwarded to one 16-byte load.
                    #[inline(always)]
                    fn pack(f: &impl Fn(usize) -> u16, b: usize) -> i64 {
                        (f(b) as u64
                            | (f(b + 1) as u64) << 16
                            | (f(b + 2) as u64) << 32
                            | (f(b + 3) as u64) << 48) as i64
                    }
                    let dw = _mm256_cvtph_ps(_mm_set_epi64x(pack(&dbits, b + 4), pack(&dbits, b)));
                    let mw = if MIN {
                        _mm256_cvtph_ps(_mm_set_epi64x(pack(&mbits, b + 4), pack(&mbits, b)))
                    } else {
                        _mm256_setzero_ps()
                    };
                    let mut s8 = [_mm256_setzero_ps(); 4];
                    for t in 0..nt {
                        // SAFETY: blocks b..b+8 exist in d and isum (checked by `dot_rows`).
                        s8[t] = _mm256_mul_ps(dw, unsafe { _mm256_loadu_ps(da[t].add(b)) });
                        if OFF != 0 || MIN {
                            let is =
                                unsafe { _mm256_loadu_si256(a[t].isum.as_ptr().add(b).cast()) };
                            let coef = if MIN {
                                _mm256_mul_ps(mw, unsafe { _mm256_loadu_ps(da[t].add(b)) })
                            } else {
                                s8[t]
                            };
                            corr[t] = _mm256_fmadd_ps(coef, _mm256_cvtepi32_ps(is), corr[t]);
                        }
                    }
                    for k in 0..8 {
                        let q = unpack(b + k);
                        for t in 0..nt {
                            let p = _mm256_cvtepi32_ps(dot(q, t, b + k));
                            let s = _mm256_permutevar8x32_ps(s8[t], lanes[k]);
                            acc[k % U][t] = _mm256_fmadd_ps(p, s, acc[k % U][t]);
                        }
                    }
                    b += 8;
                }
                while b < nb {
                    let q = unpack(b);
                    let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(dbits(b) as i32)));
                    for t in 0..nt {
                        let p = _mm256_cvtepi32_ps(dot(q, t, b));
                        // SAFETY: block b exists in d.
                        let s = dw * unsafe { *da[t].add(b) };
                        acc[0][t] = _mm256_fmadd_ps(p, _mm256_set1_ps(s), acc[0][t]);
                        if MIN {
                            let m = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(mbits(b) as i32)));
                            corr_tail[t] += m * unsafe { *da[t].add(b) } * a[t].isum[b] as f32;
                        } else if OFF != 0 {
                            corr_tail[t] += s * a[t].isum[b] as f32;
                        }
                    }
                    b += 1;
                }
                for t in 0..nt {
                    let mut v = acc[0][t];
                    for u in 1..U {
                        v = _mm256_add_ps(v, acc[u][t]);
                    }
                    let c = if OFF != 0 || MIN {
                        hsum(corr[t]) + corr_tail[t]
                    } else {
                        0.0
                    };
                    // Offset: −OFF·Σ s·Σa; min: +Σ m·d_a·Σa.
                    out[t] = hsum(v) + if MIN { c } else { -(OFF as f32) * c };
                }
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn q8_0_n(w: &[BlockQ8_0], a: &[&Q8Row], out: &mut [f32]) {
                let dbits = |b: usize| u16::from_le_bytes(w[b].d);
                if $u8_ok {
                    // q + 128 as unsigned bytes (flip the sign bit): no sign trick needed.
                    let flip = _mm256_set1_epi8(-128);
                    // SAFETY: a block holds 32 quants.
                    let unpack = |b: usize| {
                        _mm256_xor_si256(
                            unsafe { _mm256_loadu_si256(w[b].qs.as_ptr().cast()) },
                            flip,
                        )
                    };
                    unsafe { by_tokens!(128, false, w.len(), unpack, dbits, |_| 0, a, out) }
                } else {
                    // SAFETY: a block holds 32 quants.
                    let unpack = |b: usize| unsafe { _mm256_loadu_si256(w[b].qs.as_ptr().cast()) };
                    unsafe { by_tokens!(0, false, w.len(), unpack, dbits, |_| 0, a, out) }
                }
            }

            /// Sparse rows ([`Sparse`]), block by block (32-value blocks, four a
            /// super-block): each block's kept values (Q4_0: unpacked to q = u − 8) expanded
            /// to their positions, zeros elsewhere, then as the dense type's signed bytes (with
            /// VNNI, Q8_0's as q + 128: the zeros become 128 too).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn sparse_n<B: Sparse>(w: &[B], a: &[&Q8Row], out: &mut [f32]) {
                let dbits = |b: usize| {
                    let d = w[b / SPARSE_SUB].scales();
                    u16::from_le_bytes([d[2 * (b % 4)], d[2 * (b % 4) + 1]])
                };
                let expand = |b: usize| {
                    let (blk, s) = (&w[b / SPARSE_SUB], b % SPARSE_SUB);
                    let kept = if B::Q4 {
                        let qs: &[u8; 32] = blk.values().try_into().unwrap_or(&[0; 32]);
                        _mm_sub_epi8(nibbles16(qs, s), _mm_set1_epi8(8))
                    } else {
                        // SAFETY: 16 kept values per block.
                        unsafe { _mm_loadu_si128(blk.values().as_ptr().add(16 * s).cast()) }
                    };
                    _mm256_shuffle_epi8(
                        _mm256_broadcastsi128_si256(kept),
                        expand_ctl(blk.mask(s)),
                    )
                };
                let nb = w.len() * SPARSE_SUB;
                if $u8_ok && !B::Q4 {
                    let flip = _mm256_set1_epi8(-128);
                    let unpack = |b: usize| _mm256_xor_si256(expand(b), flip);
                    unsafe { by_tokens!(128, false, nb, unpack, dbits, |_| 0, a, out) }
                } else {
                    unsafe { by_tokens!(0, false, nb, expand, dbits, |_| 0, a, out) }
                }
            }

            /// Unstructured sparse rows of `n` weights (`crate::pool`), block by block:
            /// each group of eight weights takes its kept values from the pool (eight bytes
            /// from where the previous group's ended) to its positions with one byte shuffle
            /// (controls by mask byte, `pool::EXPAND8`), zeros elsewhere; then as dense Q8_0.
            /// The blocks are unpacked in order, so a cursor carries the pool position from
            /// one to the next (recounted from the masks if asked out of order).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn pooled_n(w: &[u8], n: usize, a: &[&Q8Row], out: &mut [f32]) {
                let Some((heads, pool)) = crate::pool::split(w, n) else {
                    out.fill(f32::NAN);
                    return;
                };
                let dbits = |b: usize| crate::pool::scale_bits(heads, b);
                let cursor = std::cell::Cell::new((0usize, 0usize));
                let expand = |b: usize| {
                    let (next, at) = cursor.get();
                    let mut k = if next == b { at } else { crate::pool::offset(heads, b) };
                    let m = crate::pool::block_mask(heads, b);
                    let mut g = [0i64; 4];
                    for (c, v) in g.iter_mut().enumerate() {
                        let mb = (m >> (8 * c)) as usize & 0xFF;
                        let ctl = _mm_cvtsi64_si128(crate::pool::EXPAND8[mb] as i64);
                        *v = _mm_cvtsi128_si64(_mm_shuffle_epi8(
                            _mm_cvtsi64_si128(crate::pool::eight(pool, k) as i64),
                            ctl,
                        ));
                        k += mb.count_ones() as usize;
                    }
                    cursor.set((b + 1, k));
                    _mm256_setr_epi64x(g[0], g[1], g[2], g[3])
                };
                let nb = n / QK;
                if $u8_ok {
                    let flip = _mm256_set1_epi8(-128);
                    let unpack = |b: usize| _mm256_xor_si256(expand(b), flip);
                    unsafe { by_tokens!(128, false, nb, unpack, dbits, |_| 0, a, out) }
                } else {
                    unsafe { by_tokens!(0, false, nb, expand, dbits, |_| 0, a, out) }
                }
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn q4_0_n(w: &[BlockQ4_0], a: &[&Q8Row], out: &mut [f32]) {
                let m4 = _mm256_set1_epi8(0x0F);
                // Low 128 bits: the bytes as they are (low nibbles = elements 0..16); high 128
                // bits: shifted right by 4 (high nibbles = elements 16..32).
                let shifts = _mm256_setr_epi64x(0, 0, 4, 4);
                let unpack = |b: usize| {
                    let wb = &w[b];
                    // SAFETY: 16 bytes of nibbles per block.
                    let raw = unsafe {
                        _mm256_broadcastsi128_si256(_mm_loadu_si128(wb.qs.as_ptr().cast()))
                    };
                    // The nibbles u = q + 8 go in unsigned (u ≤ 15 cannot saturate AVX2's
                    // 16-bit pair sums either).
                    _mm256_and_si256(_mm256_srlv_epi64(raw, shifts), m4)
                };
                let dbits = |b: usize| u16::from_le_bytes(w[b].d);
                unsafe { by_tokens!(8, false, w.len(), unpack, dbits, |_| 0, a, out) }
            }

            /// Q4_0 against one to four activation rows, eight weight rows at once (the decode
            /// case, and a few sequences' decode steps).
            ///
            /// Row-at-a-time, every block pays an int→float conversion, a scale broadcast and an
            /// FMA for only 32 weights. Here one vector lane pair holds one row: for block b the
            /// eight rows' 16 nibble bytes are interleaved in 8-byte halves (two 64-bit unpacks
            /// of rows loaded in pairs), so a 32-byte vector holds bytes 0..8 of four rows and
            /// each `vpdpbusd` multiplies four nibbles of every row by the same four activations
            /// (one broadcast 8-byte load). Per block and eight rows: one f16→f32 conversion of
            /// the eight scales, two int→float conversions and two FMAs. The offset of the
            /// unsigned nibbles (u = q + 8) comes off in floats at the end: 8·Σ_b d_w·(d_a·Σa),
            /// one FMA per block for the eight rows with d_a·Σa precomputed (`Q8Row::dsum`; as
            /// an integer start value it cost four instructions per block and token). The
            /// weights are read where they are (no repacked copy). With
            /// several tokens the nibbles are unpacked once per block for all of them.
            ///
            /// `w` holds eight rows of `rb` bytes; `out[r · a.len() + t]` = row r · a[t].
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q4_0_r8(w: &[u8], rb: usize, a: &[&Q8Row], out: &mut [f32]) {
                // The token count as a constant: loops over tokens unroll.
                unsafe {
                    match a.len() {
                        1 => q4_0_r8_n::<1>(w, rb, a, out),
                        2 => q4_0_r8_n::<2>(w, rb, a, out),
                        3 => q4_0_r8_n::<3>(w, rb, a, out),
                        _ => q4_0_r8_n::<4>(w, rb, a, out),
                    }
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q4_0_r8_n<const N: usize>(
                w: &[u8],
                rb: usize,
                a: &[&Q8Row],
                out: &mut [f32],
            ) {
                let nb = rb / std::mem::size_of::<BlockQ4_0>();
                debug_assert!(w.len() >= 8 * rb && out.len() >= 8 * N);
                debug_assert!(a.iter().all(|a| a.qs.len() >= nb * QK));
                let m4 = _mm256_set1_epi8(0x0F);
                let lo_rows = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
                let hi_rows = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
                let wp = w.as_ptr();
                let mut f_lo = [_mm256_setzero_ps(); N];
                let mut f_hi = [_mm256_setzero_ps(); N];
                // Σ_b d_w·d_a·isum per row (natural order), for the −8 offset.
                let mut corr = [_mm256_setzero_ps(); N];
                for b in 0..nb {
                    // SAFETY (whole loop body): rows r < 8 hold nb blocks of 18 bytes (checked
                    // by `dot_rows`), block b of row r starts at r·rb + 18b; each activation
                    // row holds nb blocks of 32 quants.
                    unsafe {
                        let blk = |r: usize| wp.add(r * rb + b * 18);
                        // The eight rows are one contiguous region read as eight short
                        // interleaved streams, which the hardware prefetcher does not follow
                        // (measured: 8 GB/s from memory against 22 from L2; prefetching each
                        // row ahead did not help). One linear stream of prefetches does, and
                        // the hardware then runs ahead of it: the next group (8·rb bytes on,
                        // consumed at the same 144 bytes a step) plus PF8, to L2.
                        let ahead = wp.wrapping_add(8 * 18 * b + 8 * rb + PF8);
                        for l in 0..3 {
                            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * l).cast());
                        }
                        let dw = _mm256_cvtph_ps(_mm_set_epi64x(
                            scales4(blk(4), rb),
                            scales4(blk(0), rb),
                        ));
                        let q = |r: usize| _mm_loadu_si128(blk(r).add(2).cast());
                        let pair = |r0: usize, r1: usize| {
                            _mm256_inserti128_si256(_mm256_castsi128_si256(q(r0)), q(r1), 1)
                        };
                        // [row0 | row2], [row1 | row3] → bytes 0..8 and 8..16 of rows 0..4.
                        let (x02, x13) = (pair(0, 2), pair(1, 3));
                        let (x46, x57) = (pair(4, 6), pair(5, 7));
                        let w_lo = [
                            _mm256_unpacklo_epi64(x02, x13),
                            _mm256_unpacklo_epi64(x46, x57),
                        ];
                        let w_hi = [
                            _mm256_unpackhi_epi64(x02, x13),
                            _mm256_unpackhi_epi64(x46, x57),
                        ];
                        // Byte i holds element i (low nibble) and element i + 16 (high):
                        // nib[h][k] pairs with activation elements 8k..8k+8.
                        let nib: [[__m256i; 4]; 2] = std::array::from_fn(|h| {
                            [
                                _mm256_and_si256(w_lo[h], m4),
                                _mm256_and_si256(w_hi[h], m4),
                                _mm256_and_si256(_mm256_srli_epi16(w_lo[h], 4), m4),
                                _mm256_and_si256(_mm256_srli_epi16(w_hi[h], 4), m4),
                            ]
                        });
                        for t in 0..N {
                            let ab = a[t].qs.as_ptr().add(b * QK).cast::<i64>();
                            let mut acc = [_mm256_setzero_si256(); 2];
                            for k in 0..4 {
                                let ak = _mm256_set1_epi64x(ab.add(k).read_unaligned());
                                acc[0] = $dp(acc[0], nib[0][k], ak);
                                acc[1] = $dp(acc[1], nib[1][k], ak);
                            }
                            let s = _mm256_mul_ps(dw, _mm256_set1_ps(*a[t].d.get_unchecked(b)));
                            corr[t] = _mm256_fmadd_ps(
                                dw,
                                _mm256_set1_ps(*a[t].dsum.get_unchecked(b)),
                                corr[t],
                            );
                            let s_lo = _mm256_permutevar8x32_ps(s, lo_rows);
                            let s_hi = _mm256_permutevar8x32_ps(s, hi_rows);
                            f_lo[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[0]), s_lo, f_lo[t]);
                            f_hi[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[1]), s_hi, f_hi[t]);
                        }
                    }
                }
                for t in 0..N {
                    // Lane pairs → rows: hadd gives [r0 r1 r4 r5 | r2 r3 r6 r7].
                    let h = _mm256_hadd_ps(f_lo[t], f_hi[t]);
                    let h = _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
                    // Σ (u − 8)·a = Σ u·a − 8·Σ a.
                    let h = _mm256_fnmadd_ps(_mm256_set1_ps(8.0), corr[t], h);
                    let mut r8 = [0f32; 8];
                    // SAFETY: r8 holds eight floats.
                    unsafe { _mm256_storeu_ps(r8.as_mut_ptr(), h) };
                    // `out` is [row][token].
                    for (r, v) in r8.iter().enumerate() {
                        out[r * N + t] = *v;
                    }
                }
            }

            /// Q4_K against one to four activation rows, eight weight rows at once (decode),
            /// read in place like [`q4_0_r8`]'s: block b's nibble bytes of eight rows are
            /// interleaved by 64-bit unpacks of rows loaded in pairs, so one lane pair holds one
            /// row and each `vpdpbusd` multiplies eight nibbles of four rows by the same eight
            /// activations (one broadcast load). What the one-row kernel pays per block and
            /// row — the f16 scales, the 6-bit scale and min unpacking, the activation's
            /// sub-block sums, the int→float conversions — is paid once per block for eight
            /// rows, in vectors:
            ///
            /// * the 16-byte block headers (d, dmin, 12 scale bytes) of the eight rows are
            ///   transposed as a 4×4 dword matrix per 128-bit lane, giving vectors with one
            ///   dword per row: d|dmin and the three scale words, which unpack with the same
            ///   word operations as [`k4_unpack`], for all rows at once;
            /// * a sub-block's integer dot (four `vpdpbusd`) is multiplied by its scale per
            ///   lane (`vpmulld`; the scale vector is one byte shuffle of a lane-pair copy);
            /// * Σ_s m_s·B_s (B_s: the activation's sum over sub-block s) is four `vpmaddwd`
            ///   of the mins as word pairs by broadcast pairs (B_s, B_s+1).
            ///
            /// The eight interleaved streams are prefetched as one linear stream (see
            /// [`q4_0_r8`]). With `FIVE`, Q5_K: the same header, then 32 bytes of fifth bits
            /// (bit 2g of byte j for element j of sub-block 2g, bit 2g+1 for 2g+1), interleaved
            /// as the nibbles are and moved to bit 4.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q4_k_r8<const FIVE: bool>(
                w: &[u8],
                rb: usize,
                a: &[&Q8KRow],
                out: &mut [f32],
            ) {
                // The token count as a constant: loops over tokens unroll.
                unsafe {
                    match a.len() {
                        1 => q4_k_r8_n::<1, FIVE>(w, rb, a, out),
                        2 => q4_k_r8_n::<2, FIVE>(w, rb, a, out),
                        3 => q4_k_r8_n::<3, FIVE>(w, rb, a, out),
                        _ => q4_k_r8_n::<4, FIVE>(w, rb, a, out),
                    }
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q4_k_r8_n<const N: usize, const FIVE: bool>(
                w: &[u8],
                rb: usize,
                a: &[&Q8KRow],
                out: &mut [f32],
            ) {
                let nb = rb / K4::<FIVE>::BB;
                let one = _mm256_set1_epi8(1);
                debug_assert!(w.len() >= 8 * rb && out.len() >= 8 * N);
                debug_assert!(a.iter().all(|a| a.qs.len() >= nb * QK_K));
                let m4 = _mm256_set1_epi8(0x0F);
                let low6 = _mm256_set1_epi32(0x3F3F_3F3F);
                let low4 = _mm256_set1_epi32(0x0F0F_0F0F);
                let top2 = _mm256_set1_epi32(0x0303_0303);
                let low16 = _mm256_set1_epi32(0xFFFF);
                // Rows in lane pairs: [r0 r0 r1 r1 | r2 r2 r3 r3] and rows 4..8 likewise.
                let pairs = [
                    _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3),
                    _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7),
                ];
                // Byte s of every dword, zero-extended (the scale of sub-block s of 4).
                let byte: [__m256i; 4] = std::array::from_fn(|s| {
                    let m = (s as u32) | 0xFFFF_FF00;
                    let k = |i: u32| (m + (i << 2)) as i32;
                    _mm256_setr_epi32(k(0), k(1), k(2), k(3), k(0), k(1), k(2), k(3))
                });
                // Bytes 2p and 2p+1 of every dword as two words (the mins of a sub-block pair).
                let word_pair: [__m256i; 2] = std::array::from_fn(|p| {
                    let k = |i: u32| {
                        let b0 = (4 * i + 2 * p as u32) | 0xFF00;
                        let b1 = (4 * i + 2 * p as u32 + 1) | 0xFF00;
                        (b0 | b1 << 16) as i32
                    };
                    _mm256_setr_epi32(k(0), k(1), k(2), k(3), k(0), k(1), k(2), k(3))
                });
                let wp = w.as_ptr();
                let mut f = [[_mm256_setzero_ps(); N]; 2];
                let mut f_min = [_mm256_setzero_ps(); N];
                for b in 0..nb {
                    // SAFETY (whole loop body): rows r < 8 hold nb blocks of BB bytes (checked
                    // by `dot_rows`), block b of row r starts at r·rb + BB·b; each activation
                    // row holds nb blocks of 256 quants and 16 group sums.
                    unsafe {
                        let blk = |r: usize| wp.add(r * rb + b * K4::<FIVE>::BB);
                        // The next row group, 8·BB bytes a step, plus PF8 (as q4_0_r8).
                        let ahead = wp.wrapping_add(8 * K4::<FIVE>::BB * b + 8 * rb + PF8);
                        for l in 0..8 * K4::<FIVE>::BB / 64 {
                            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * l).cast());
                        }
                        let pair = |p0: *const u8, p1: *const u8| {
                            _mm256_inserti128_si256(
                                _mm256_castsi128_si256(_mm_loadu_si128(p0.cast())),
                                _mm_loadu_si128(p1.cast()),
                                1,
                            )
                        };
                        // Headers, rows (0,4), (1,5), (2,6), (3,7); the transpose gives dword
                        // k of rows [0 1 2 3 | 4 5 6 7].
                        let (h04, h15) = (pair(blk(0), blk(4)), pair(blk(1), blk(5)));
                        let (h26, h37) = (pair(blk(2), blk(6)), pair(blk(3), blk(7)));
                        let t0 = _mm256_unpacklo_epi32(h04, h15);
                        let t1 = _mm256_unpackhi_epi32(h04, h15);
                        let t2 = _mm256_unpacklo_epi32(h26, h37);
                        let t3 = _mm256_unpackhi_epi32(h26, h37);
                        let dd = _mm256_unpacklo_epi64(t0, t2);
                        let w0 = _mm256_unpackhi_epi64(t0, t2);
                        let w1 = _mm256_unpacklo_epi64(t1, t3);
                        let w2 = _mm256_unpackhi_epi64(t1, t3);
                        // k4_unpack for eight rows: scales (sub-blocks 0..4, 4..8), mins.
                        let sc = [
                            _mm256_and_si256(w0, low6),
                            _mm256_or_si256(
                                _mm256_and_si256(w2, low4),
                                _mm256_slli_epi32(
                                    _mm256_and_si256(_mm256_srli_epi32(w0, 6), top2),
                                    4,
                                ),
                            ),
                        ];
                        let mn = [
                            _mm256_and_si256(w1, low6),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi32(w2, 4), low4),
                                _mm256_slli_epi32(
                                    _mm256_and_si256(_mm256_srli_epi32(w1, 6), top2),
                                    4,
                                ),
                            ),
                        ];
                        // d and dmin of the eight rows: [d0..d3 m0..m3 | d4..d7 m4..m7] →
                        // [d0..d7 | m0..m7].
                        let dm = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(
                            _mm256_and_si256(dd, low16),
                            _mm256_srli_epi32(dd, 16),
                        ));
                        let dw = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
                        let dminw = _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(dm));
                        // The mins as word pairs, one dword per row: sub-blocks (0,1), (2,3),
                        // (4,5), (6,7).
                        let mpairs = [
                            _mm256_shuffle_epi8(mn[0], word_pair[0]),
                            _mm256_shuffle_epi8(mn[0], word_pair[1]),
                            _mm256_shuffle_epi8(mn[1], word_pair[0]),
                            _mm256_shuffle_epi8(mn[1], word_pair[1]),
                        ];
                        // Q5_K: the fifth bits' bytes in the nibbles' order (as `oct` below).
                        let hoct: [[__m256i; 4]; 2] = std::array::from_fn(|h| {
                            let mut v = [_mm256_setzero_si256(); 4];
                            if FIVE {
                                let r = 4 * h;
                                let qh = |r: usize, c: usize| blk(r).add(16 + 16 * c);
                                for c in 0..2 {
                                    let x02 = pair(qh(r, c), qh(r + 2, c));
                                    let x13 = pair(qh(r + 1, c), qh(r + 3, c));
                                    v[2 * c] = _mm256_unpacklo_epi64(x02, x13);
                                    v[2 * c + 1] = _mm256_unpackhi_epi64(x02, x13);
                                }
                            }
                            v
                        });
                        let mut acc = [[_mm256_setzero_si256(); N]; 2];
                        for g in 0..4 {
                            // Scales of sub-blocks 2g and 2g+1 in lane-pair order, per half.
                            let scw = sc[g / 2];
                            let sc_h: [[__m256i; 2]; 2] = std::array::from_fn(|h| {
                                let p = _mm256_permutevar8x32_epi32(scw, pairs[h]);
                                [
                                    _mm256_shuffle_epi8(p, byte[2 * (g % 2)]),
                                    _mm256_shuffle_epi8(p, byte[2 * (g % 2) + 1]),
                                ]
                            });
                            // The group's 32 bytes per row, as 16-byte halves c.
                            let q =
                                |r: usize, c: usize| blk(r).add(K4::<FIVE>::QS + 32 * g + 16 * c);
                            // oct[h][o]: bytes 8o..8o+8 of the four rows of half h.
                            let oct: [[__m256i; 4]; 2] = std::array::from_fn(|h| {
                                let r = 4 * h;
                                let mut v = [_mm256_setzero_si256(); 4];
                                for c in 0..2 {
                                    let x02 = pair(q(r, c), q(r + 2, c));
                                    let x13 = pair(q(r + 1, c), q(r + 3, c));
                                    v[2 * c] = _mm256_unpacklo_epi64(x02, x13);
                                    v[2 * c + 1] = _mm256_unpackhi_epi64(x02, x13);
                                }
                                v
                            });
                            let mut nib: [[[__m256i; 4]; 2]; 2] = std::array::from_fn(|h| {
                                [
                                    std::array::from_fn(|o| _mm256_and_si256(oct[h][o], m4)),
                                    std::array::from_fn(|o| {
                                        _mm256_and_si256(_mm256_srli_epi16(oct[h][o], 4), m4)
                                    }),
                                ]
                            });
                            if FIVE {
                                let sh = _mm_cvtsi32_si128(2 * g as i32);
                                for h in 0..2 {
                                    for o in 0..4 {
                                        // Bits 2g and 2g+1 of every byte, to bit 4.
                                        let x = _mm256_srl_epi16(hoct[h][o], sh);
                                        let lo = _mm256_slli_epi16(_mm256_and_si256(x, one), 4);
                                        let hi = _mm256_slli_epi16(
                                            _mm256_and_si256(_mm256_srli_epi16(x, 1), one),
                                            4,
                                        );
                                        nib[h][0][o] = _mm256_or_si256(nib[h][0][o], lo);
                                        nib[h][1][o] = _mm256_or_si256(nib[h][1][o], hi);
                                    }
                                }
                            }
                            for t in 0..N {
                                let ab = a[t].qs.as_ptr().add(b * QK_K + 64 * g).cast::<i64>();
                                for h in 0..2 {
                                    for sb in 0..2 {
                                        let mut d = _mm256_setzero_si256();
                                        for o in 0..4 {
                                            let ak = _mm256_set1_epi64x(
                                                ab.add(4 * sb + o).read_unaligned(),
                                            );
                                            d = $dp(d, nib[h][sb][o], ak);
                                        }
                                        acc[h][t] = _mm256_add_epi32(
                                            acc[h][t],
                                            _mm256_mullo_epi32(d, sc_h[h][sb]),
                                        );
                                    }
                                }
                            }
                        }
                        for t in 0..N {
                            // B_s in pairs: hadd gives [B0 B1 B4 B5 | B2 B3 B6 B7], packed to
                            // words; dword k of the packed vector is a pair.
                            let bs = a[t].bsums.as_ptr().add(b * 16);
                            let bsum = _mm256_hadd_epi32(
                                _mm256_loadu_si256(bs.cast()),
                                _mm256_loadu_si256(bs.add(8).cast()),
                            );
                            let bw = _mm256_packs_epi32(bsum, bsum);
                            let mut m = _mm256_setzero_si256();
                            for (p, idx) in [0, 4, 1, 5].into_iter().enumerate() {
                                let bp = _mm256_permutevar8x32_epi32(bw, _mm256_set1_epi32(idx));
                                m = _mm256_add_epi32(m, _mm256_madd_epi16(mpairs[p], bp));
                            }
                            let da = _mm256_set1_ps(*a[t].d.get_unchecked(b));
                            let s = _mm256_mul_ps(dw, da);
                            for h in 0..2 {
                                let sh = _mm256_permutevar8x32_ps(s, pairs[h]);
                                f[h][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[h][t]), sh, f[h][t]);
                            }
                            f_min[t] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(m),
                                _mm256_mul_ps(dminw, da),
                                f_min[t],
                            );
                        }
                    }
                }
                for t in 0..N {
                    // Lane pairs → rows: hadd gives [r0 r1 r4 r5 | r2 r3 r6 r7].
                    let h = _mm256_hadd_ps(f[0][t], f[1][t]);
                    let h = _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
                    let h = _mm256_sub_ps(h, f_min[t]);
                    let mut r8 = [0f32; 8];
                    // SAFETY: r8 holds eight floats.
                    unsafe { _mm256_storeu_ps(r8.as_mut_ptr(), h) };
                    // `out` is [row][token].
                    for (r, v) in r8.iter().enumerate() {
                        out[r * N + t] = *v;
                    }
                }
            }

            /// The unpacking of a five-bit block (Q5_0, Q5_1: fields `qs`, `qh`) into u in 0..31:
            /// the nibbles as in Q4_0, plus the fifth bit of element j from bit j of `qh` —
            /// each byte of the vector picks qh's byte j/8 and tests bit j%8.
            macro_rules! five_bit_unpack {
                ($w:ident) => {{
                    let m4 = _mm256_set1_epi8(0x0F);
                    let shifts = _mm256_setr_epi64x(0, 0, 4, 4);
                    let spread = _mm256_setr_epi8(
                        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                        3, 3, 3, 3, 3, 3, 3,
                    );
                    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
                    let sixteen = _mm256_set1_epi8(16);
                    move |b: usize| {
                        let wb = &$w[b];
                        // SAFETY: 16 bytes of nibbles per block.
                        let raw = unsafe {
                            _mm256_broadcastsi128_si256(_mm_loadu_si128(wb.qs.as_ptr().cast()))
                        };
                        let lo = _mm256_and_si256(_mm256_srlv_epi64(raw, shifts), m4);
                        let qh = _mm256_set1_epi32(u32::from_le_bytes(wb.qh) as i32);
                        let hb = _mm256_and_si256(_mm256_shuffle_epi8(qh, spread), bit);
                        let hi = _mm256_and_si256(_mm256_cmpeq_epi8(hb, bit), sixteen);
                        _mm256_or_si256(lo, hi)
                    }
                }};
            }

            /// Q4_1: the nibbles of Q4_0 as they are (x = d·u + m), the mins through the
            /// activation block sums.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q4_1_n(w: &[BlockQ4_1], a: &[&Q8Row], out: &mut [f32]) {
                let m4 = _mm256_set1_epi8(0x0F);
                let shifts = _mm256_setr_epi64x(0, 0, 4, 4);
                let unpack = |b: usize| {
                    // SAFETY: 16 bytes of nibbles per block.
                    let raw = unsafe {
                        _mm256_broadcastsi128_si256(_mm_loadu_si128(w[b].qs.as_ptr().cast()))
                    };
                    _mm256_and_si256(_mm256_srlv_epi64(raw, shifts), m4)
                };
                let dbits = |b: usize| u16::from_le_bytes(w[b].d);
                let mbits = |b: usize| u16::from_le_bytes(w[b].m);
                unsafe { by_tokens!(0, true, w.len(), unpack, dbits, mbits, a, out) }
            }

            /// Q5_1: Q5_0's five-bit values as they are (x = d·u + m), the mins as in Q4_1.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q5_1_n(w: &[BlockQ5_1], a: &[&Q8Row], out: &mut [f32]) {
                let unpack = five_bit_unpack!(w);
                let dbits = |b: usize| u16::from_le_bytes(w[b].d);
                let mbits = |b: usize| u16::from_le_bytes(w[b].m);
                unsafe { by_tokens!(0, true, w.len(), unpack, dbits, mbits, a, out) }
            }

            /// Q5_0: five-bit values u = q + 16 (≤ 31, `five_bit_unpack!`) go in unsigned; the
            /// offset comes off through the activation block sums.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q5_0_n(w: &[BlockQ5_0], a: &[&Q8Row], out: &mut [f32]) {
                let unpack = five_bit_unpack!(w);
                let dbits = |b: usize| u16::from_le_bytes(w[b].d);
                unsafe { by_tokens!(16, false, w.len(), unpack, dbits, |_| 0, a, out) }
            }

            /// Q4_K: per 64-element group the low nibbles form sub-block 2g and the high
            /// ones 2g+1. Weights × activations into 16-bit pair sums (`vpmaddubsw`; 31·127·2
            /// cannot saturate), then × the sub-block's 6-bit scale into 32-bit sums
            /// (`vpmaddwd`). The twelve scale bytes are unpacked with word operations (eight
            /// scales and eight mins, 6 bits each); the mins are applied through the
            /// activation's group sums.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q4_k_n(w: &[BlockQ4K], a: &[&Q8KRow], out: &mut [f32]) {
                let m4 = _mm256_set1_epi8(0x0F);
                let meta = |b: usize| (f16_le(w[b].d), f16_le(w[b].dmin), &w[b].scales);
                let unpack = |b: usize, g: usize| {
                    // SAFETY: 32 bytes of nibbles per group.
                    let raw = unsafe { _mm256_loadu_si256(w[b].qs.as_ptr().add(g * 32).cast()) };
                    (
                        _mm256_and_si256(raw, m4),
                        _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4),
                    )
                };
                unsafe { k4_like(w.len(), meta, unpack, a, out) }
            }

            /// Q5_K: Q4_K plus a fifth bit per element, bit 2g (low sub-block) or 2g+1 (high)
            /// of qh[l], moved to bit 4 of each byte (shifts within 16-bit lanes, then a mask
            /// that keeps bit 0 of every byte).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q5_k_n(w: &[BlockQ5K], a: &[&Q8KRow], out: &mut [f32]) {
                let m4 = _mm256_set1_epi8(0x0F);
                let one = _mm256_set1_epi8(1);
                let meta = |b: usize| (f16_le(w[b].d), f16_le(w[b].dmin), &w[b].scales);
                let unpack = |b: usize, g: usize| {
                    // SAFETY: 32 bytes of nibbles per group, 32 bytes of qh.
                    let (raw, qh) = unsafe {
                        (
                            _mm256_loadu_si256(w[b].qs.as_ptr().add(g * 32).cast()),
                            _mm256_loadu_si256(w[b].qh.as_ptr().cast()),
                        )
                    };
                    let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32));
                    let h_lo = _mm256_slli_epi16(_mm256_and_si256(h, one), 4);
                    let h_hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 1), one), 4);
                    (
                        _mm256_or_si256(_mm256_and_si256(raw, m4), h_lo),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), h_hi),
                    )
                };
                unsafe { k4_like(w.len(), meta, unpack, a, out) }
            }

            /// The shared body of Q4_K and Q5_K: `meta(b)` gives block b's (d, dmin, packed
            /// scales), `unpack(b, g)` the unsigned values of group g's two sub-blocks.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn k4_like<'w>(
                nb: usize,
                meta: impl Fn(usize) -> (f32, f32, &'w [u8; 12]),
                unpack: impl Fn(usize, usize) -> (__m256i, __m256i),
                a: &[&Q8KRow],
                out: &mut [f32],
            ) {
                let nt = a.len();
                let mut res = [0f32; 4];
                // Byte masks that broadcast i16 word j to every lane.
                let word: [__m256i; 8] =
                    std::array::from_fn(|j| _mm256_set1_epi16(((2 * j + 1) << 8 | 2 * j) as i16));
                let mut facc = [_mm256_setzero_ps(); 4];
                for b in 0..nb {
                    let (d, dmin, packed) = meta(b);
                    let (sc, mn) = k4_unpack(packed);
                    let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(
                        sc as i64,
                    )));
                    // Two chains per token (low and high sub-blocks): one would be latency-bound.
                    let mut acc = [[_mm256_setzero_si256(); 4]; 2];
                    for g in 0..4 {
                        let (lo, hi) = unpack(b, g);
                        let s_lo = _mm256_shuffle_epi8(sc16, word[2 * g]);
                        let s_hi = _mm256_shuffle_epi8(sc16, word[2 * g + 1]);
                        for t in 0..nt {
                            let base = a[t].qs.as_ptr();
                            let off = b * QK_K + g * 64;
                            // SAFETY: the activation row holds the block's 256 quants.
                            let (q0, q1) = unsafe {
                                (
                                    _mm256_loadu_si256(base.add(off).cast()),
                                    _mm256_loadu_si256(base.add(off + 32).cast()),
                                )
                            };
                            acc[0][t] = $dpw(acc[0][t], _mm256_maddubs_epi16(lo, q0), s_lo);
                            acc[1][t] = $dpw(acc[1][t], _mm256_maddubs_epi16(hi, q1), s_hi);
                        }
                    }
                    // Σ_j m_j·(bsum_2j + bsum_2j+1) in vectors: the pair sums come out of
                    // `vphaddd` as pairs [0 1 4 5 | 2 3 6 7], so the mins go in that order.
                    let mins = _mm256_permutevar8x32_epi32(
                        _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mn as i64)),
                        _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7),
                    );
                    for t in 0..nt {
                        // SAFETY: 16 group sums per block.
                        let (b0, b1) = unsafe {
                            let p = a[t].bsums.as_ptr().add(b * 16);
                            (
                                _mm256_loadu_si256(p.cast()),
                                _mm256_loadu_si256(p.add(8).cast()),
                            )
                        };
                        let sum_m = _mm256_mullo_epi32(_mm256_hadd_epi32(b0, b1), mins);
                        let da = a[t].d[b];
                        facc[t] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(_mm256_add_epi32(acc[0][t], acc[1][t])),
                            _mm256_set1_ps(da * d),
                            facc[t],
                        );
                        facc[t] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(sum_m),
                            _mm256_set1_ps(-da * dmin),
                            facc[t],
                        );
                    }
                }
                for t in 0..nt {
                    res[t] = hsum(facc[t]);
                }
                // A loop, not `copy_from_slice`: for at most four values that is a call to
                // memcpy per row (measured: 2.5 % of a Q4_K_M decode step).
                for t in 0..nt {
                    out[t] = res[t];
                }
            }

            /// Q6_K, unpacked in vectors: per half super-block (128 weights) the low nibbles
            /// `ql` (64 bytes) and the 2-bit high parts `qh` (32 bytes) give four vectors of 32
            /// unsigned 6-bit values u = q + 32 (elements 0..32, 32..64, 64..96, 96..128 of the
            /// half). Each is multiplied by the activations into 16-bit pair sums (`vpmaddubsw`;
            /// 63·127·2 cannot saturate) and those by the groups' scales into 32-bit sums
            /// (`vpmaddwd`) — the scale multiply and the widening in one instruction. The offset
            /// comes off once per super-block: 32·Σ_g sc_g·bsum_g.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q6_k_n(w: &[BlockQ6K], a: &[&Q8KRow], out: &mut [f32]) {
                // The token count as a constant: loops over tokens unroll.
                unsafe {
                    match a.len() {
                        1 => q6_k_inner::<1>(w, a, out),
                        2 => q6_k_inner::<2>(w, a, out),
                        3 => q6_k_inner::<3>(w, a, out),
                        _ => q6_k_inner::<4>(w, a, out),
                    }
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q6_k_inner<const N: usize>(w: &[BlockQ6K], a: &[&Q8KRow], out: &mut [f32]) {
                let nt = N;
                let mut res = [0f32; 4];
                let m4 = _mm256_set1_epi8(0x0F);
                let m3 = _mm256_set1_epi8(3);
                // For vector k (groups 2k, 2k+1): scale 2k in the low 128 bits, 2k+1 in the
                // high ones, as i16. `vpermd` puts the dword holding both in every lane, the
                // byte shuffle picks word 0 (low lane) or word 1 (high lane).
                let pick = _mm256_setr_epi8(
                    0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
                    2, 3, 2, 3, 2, 3,
                );
                let mut facc = [_mm256_setzero_ps(); 4];
                for (b, wb) in w.iter().enumerate() {
                    let d = f16_le(wb.d);
                    // SAFETY: 16 scale bytes per block.
                    let sc8 = unsafe { _mm_loadu_si128(wb.scales.as_ptr().cast()) };
                    let sc16 = _mm256_cvtepi8_epi16(sc8);
                    // Two chains per token (even and odd vectors): one would be latency-bound.
                    let mut acc = [[_mm256_setzero_si256(); 4]; 2];
                    for half in 0..2 {
                        // SAFETY: 64 bytes of ql and 32 of qh per half.
                        let (l0, l1, h) = unsafe {
                            (
                                _mm256_loadu_si256(wb.ql.as_ptr().add(64 * half).cast()),
                                _mm256_loadu_si256(wb.ql.as_ptr().add(64 * half + 32).cast()),
                                _mm256_loadu_si256(wb.qh.as_ptr().add(32 * half).cast()),
                            )
                        };
                        let hi = |shift: i32| {
                            // Bits shift..shift+2 of qh moved to bits 4..6.
                            let v = match shift {
                                0 => h,
                                2 => _mm256_srli_epi16(h, 2),
                                4 => _mm256_srli_epi16(h, 4),
                                _ => _mm256_srli_epi16(h, 6),
                            };
                            _mm256_slli_epi16(_mm256_and_si256(v, m3), 4)
                        };
                        let u = [
                            _mm256_or_si256(_mm256_and_si256(l0, m4), hi(0)),
                            _mm256_or_si256(_mm256_and_si256(l1, m4), hi(2)),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), hi(4)),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), hi(6)),
                        ];
                        for (j, &uj) in u.iter().enumerate() {
                            let k = 4 * half + j;
                            let sk = _mm256_shuffle_epi8(
                                _mm256_permutevar8x32_epi32(sc16, _mm256_set1_epi32(k as i32)),
                                pick,
                            );
                            for t in 0..nt {
                                // SAFETY: the activation row holds the block's 256 quants.
                                let qa = unsafe {
                                    _mm256_loadu_si256(
                                        a[t].qs.as_ptr().add(b * QK_K + 32 * k).cast(),
                                    )
                                };
                                let p16 = _mm256_maddubs_epi16(uj, qa);
                                acc[j % 2][t] = $dpw(acc[j % 2][t], p16, sk);
                            }
                        }
                    }
                    // 32·Σ_g sc_g·bsum_g: the offset of u.
                    let sc_lo = _mm256_cvtepi8_epi32(sc8);
                    let sc_hi = _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(sc8, sc8));
                    for t in 0..nt {
                        // SAFETY: 16 group sums per block.
                        let (b0, b1) = unsafe {
                            let p = a[t].bsums.as_ptr().add(b * 16);
                            (
                                _mm256_loadu_si256(p.cast()),
                                _mm256_loadu_si256(p.add(8).cast()),
                            )
                        };
                        let off = _mm256_add_epi32(
                            _mm256_mullo_epi32(sc_lo, b0),
                            _mm256_mullo_epi32(sc_hi, b1),
                        );
                        let v = _mm256_sub_epi32(
                            _mm256_add_epi32(acc[0][t], acc[1][t]),
                            _mm256_slli_epi32(off, 5),
                        );
                        facc[t] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(v),
                            _mm256_set1_ps(a[t].d[b] * d),
                            facc[t],
                        );
                    }
                }
                for t in 0..nt {
                    res[t] = hsum(facc[t]);
                }
                // A loop, not `copy_from_slice`: for at most four values that is a call to
                // memcpy per row (measured: 2.5 % of a Q4_K_M decode step).
                for t in 0..nt {
                    out[t] = res[t];
                }
            }

            /// Q2_K and Q3_K against 1–4 Q8_K rows, unpacked in vectors as Q6_K is: per half
            /// super-block the 32 bytes of `qs` give four vectors of 2-bit values (bits 2j),
            /// Q3_K adding its high bit (bit 4·half + j of each `hmask` byte) as 4·h; each
            /// vector times the activations into 16-bit pair sums (`vpmaddubsw`; 7·128·2
            /// cannot saturate), and those by the groups' scales into 32-bit sums (`vpmaddwd`).
            /// Q2_K's mins come off once per super-block (dmin·Σ_g m_g·bsum_g), Q3_K's offset
            /// of 4 likewise (4·Σ_g sc_g·bsum_g).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q2_k_n(w: &[BlockQ2K], a: &[&Q8KRow], out: &mut [f32]) {
                // SAFETY: the caller's contract (this function's features are present).
                unsafe {
                    match a.len() {
                        1 => lowbit_inner::<1, false, _>(w, a, out),
                        2 => lowbit_inner::<2, false, _>(w, a, out),
                        3 => lowbit_inner::<3, false, _>(w, a, out),
                        _ => lowbit_inner::<4, false, _>(w, a, out),
                    }
                }
            }

            /// See [`q2_k_n`].
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q3_k_n(w: &[BlockQ3K], a: &[&Q8KRow], out: &mut [f32]) {
                // SAFETY: as in `q2_k_n`.
                unsafe {
                    match a.len() {
                        1 => lowbit_inner::<1, true, _>(w, a, out),
                        2 => lowbit_inner::<2, true, _>(w, a, out),
                        3 => lowbit_inner::<3, true, _>(w, a, out),
                        _ => lowbit_inner::<4, true, _>(w, a, out),
                    }
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn lowbit_inner<const N: usize, const Q3: bool, B: LowBitK>(
                w: &[B],
                a: &[&Q8KRow],
                out: &mut [f32],
            ) {
                let m3 = _mm256_set1_epi8(3);
                let one = _mm256_set1_epi8(1);
                // As in q6_k_inner: scale 2k in the low 128 bits, 2k+1 in the high ones.
                let pick = _mm256_setr_epi8(
                    0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
                    2, 3, 2, 3, 2, 3,
                );
                let mut facc = [_mm256_setzero_ps(); N];
                for (b, wb) in w.iter().enumerate() {
                    let (sc8, m8) = wb.scales_mins();
                    let sc16 = _mm256_cvtepi8_epi16(sc8);
                    // SAFETY: 32 bytes of hmask (Q3_K; Q2_K's are unused zeros).
                    let hm = unsafe { _mm256_loadu_si256(wb.hmask().as_ptr().cast()) };
                    let mut acc = [[_mm256_setzero_si256(); N]; 2];
                    for half in 0..2 {
                        // SAFETY: 64 bytes of qs.
                        let q = unsafe { _mm256_loadu_si256(wb.qs().as_ptr().add(32 * half).cast()) };
                        for j in 0..4 {
                            let k = 4 * half + j;
                            let shift = _mm_cvtsi32_si128(2 * j as i32);
                            let mut u = _mm256_and_si256(_mm256_srl_epi16(q, shift), m3);
                            if Q3 {
                                let h = _mm256_and_si256(
                                    _mm256_srl_epi16(hm, _mm_cvtsi32_si128(k as i32)),
                                    one,
                                );
                                u = _mm256_or_si256(u, _mm256_slli_epi16(h, 2));
                            }
                            let sk = _mm256_shuffle_epi8(
                                _mm256_permutevar8x32_epi32(sc16, _mm256_set1_epi32(k as i32)),
                                pick,
                            );
                            for t in 0..N {
                                // SAFETY: the activation row holds the block's 256 quants.
                                let qa = unsafe {
                                    _mm256_loadu_si256(
                                        a[t].qs.as_ptr().add(b * QK_K + 32 * k).cast(),
                                    )
                                };
                                let p16 = _mm256_maddubs_epi16(u, qa);
                                acc[j % 2][t] = $dpw(acc[j % 2][t], p16, sk);
                            }
                        }
                    }
                    // Σ_g c_g·bsum_g with c = the mins (Q2_K) or the scales (Q3_K).
                    let c8 = if Q3 { sc8 } else { m8 };
                    let c_lo = _mm256_cvtepi8_epi32(c8);
                    let c_hi = _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(c8, c8));
                    let (d, dmin) = wb.d_dmin();
                    for t in 0..N {
                        // SAFETY: 16 group sums per block.
                        let (b0, b1) = unsafe {
                            let p = a[t].bsums.as_ptr().add(b * 16);
                            (
                                _mm256_loadu_si256(p.cast()),
                                _mm256_loadu_si256(p.add(8).cast()),
                            )
                        };
                        let cb = _mm256_add_epi32(
                            _mm256_mullo_epi32(c_lo, b0),
                            _mm256_mullo_epi32(c_hi, b1),
                        );
                        let v = _mm256_add_epi32(acc[0][t], acc[1][t]);
                        let da = a[t].d[b];
                        if Q3 {
                            // Σ sc·Σ (u − 4)·a = Σ sc·Σ u·a − 4·Σ sc·bsum.
                            let v = _mm256_sub_epi32(v, _mm256_slli_epi32(cb, 2));
                            facc[t] =
                                _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(da * d), facc[t]);
                        } else {
                            facc[t] =
                                _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(da * d), facc[t]);
                            facc[t] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(cb),
                                _mm256_set1_ps(-da * dmin),
                                facc[t],
                            );
                        }
                    }
                }
                for t in 0..N {
                    out[t] = hsum(facc[t]);
                }
            }
        }
    };
}

/// What the Q2_K / Q3_K kernels read of a block.
trait LowBitK {
    /// The sixteen group scales as i8 (Q3_K: the 6-bit values minus 32) and, for Q2_K, the
    /// sixteen mins (Q3_K: zeros), in vector registers: built there from the block's bytes (a
    /// byte array written value by value and loaded as one vector would stall the load on
    /// store forwarding).
    fn scales_mins(&self) -> (__m128i, __m128i);
    fn qs(&self) -> &[u8; QK_K / 4];
    /// The high bits (Q3_K; Q2_K: zeros).
    fn hmask(&self) -> &[u8; QK_K / 8];
    /// d and dmin (Q3_K: 0).
    fn d_dmin(&self) -> (f32, f32);
}

impl LowBitK for BlockQ2K {
    #[inline(always)]
    fn scales_mins(&self) -> (__m128i, __m128i) {
        // SAFETY: SSE2 is part of x86_64; 16 scale bytes.
        unsafe {
            let raw = _mm_loadu_si128(self.scales.as_ptr().cast());
            let m4 = _mm_set1_epi8(0x0F);
            (
                _mm_and_si128(raw, m4),
                _mm_and_si128(_mm_srli_epi16(raw, 4), m4),
            )
        }
    }
    #[inline(always)]
    fn qs(&self) -> &[u8; QK_K / 4] {
        &self.qs
    }
    #[inline(always)]
    fn hmask(&self) -> &[u8; QK_K / 8] {
        const ZERO: [u8; QK_K / 8] = [0; QK_K / 8];
        &ZERO
    }
    #[inline(always)]
    fn d_dmin(&self) -> (f32, f32) {
        (f16_le(self.d), f16_le(self.dmin))
    }
}

impl LowBitK for BlockQ3K {
    #[inline(always)]
    fn scales_mins(&self) -> (__m128i, __m128i) {
        let (lo, hi) = crate::dequant::q3k_scale_words(&self.scales);
        // SAFETY: SSE2 is part of x86_64.
        unsafe {
            (
                _mm_sub_epi8(_mm_set_epi64x(hi as i64, lo as i64), _mm_set1_epi8(32)),
                _mm_setzero_si128(),
            )
        }
    }
    #[inline(always)]
    fn qs(&self) -> &[u8; QK_K / 4] {
        &self.qs
    }
    #[inline(always)]
    fn hmask(&self) -> &[u8; QK_K / 8] {
        &self.hmask
    }
    #[inline(always)]
    fn d_dmin(&self) -> (f32, f32) {
        (f16_le(self.d), 0.0)
    }
}

/// The twelve scale bytes of a Q4_K/Q5_K block as (eight scales, eight mins), one byte each
/// (`dequant::k4_scale_min` for all eight at once): for j < 4, sc_j = s_j & 63 and
/// m_j = s_{j+4} & 63; for j ≥ 4, sc_j = (s_{j+4} & 15) | (s_{j−4} >> 6) << 4 and
/// m_j = (s_{j+4} >> 4) | (s_j >> 6) << 4.
#[inline]
fn k4_unpack(s: &[u8; 12]) -> (u64, u64) {
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (w0, w1, w2) = (w(0), w(1), w(2));
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const TOP2: u32 = 0x0303_0303;
    let sc_hi = (w2 & LOW4) | ((w0 >> 6) & TOP2) << 4;
    let mn_hi = ((w2 >> 4) & LOW4) | ((w1 >> 6) & TOP2) << 4;
    (
        (w0 & LOW6) as u64 | (sc_hi as u64) << 32,
        (w1 & LOW6) as u64 | (mn_hi as u64) << 32,
    )
}

/// AVX2: u8×i8 pairs summed to i16 (`vpmaddubsw`), then pairs of i16 to i32 (`vpmaddwd`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn mul_sum_avx2(ax: __m256i, sy: __m256i) -> __m256i {
    let dot16 = _mm256_maddubs_epi16(ax, sy);
    _mm256_madd_epi16(dot16, _mm256_set1_epi16(1))
}

/// AVX-512 VNNI: u8×i8 quads summed straight into i32 (`vpdpbusd`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn mul_sum_vnni(ax: __m256i, sy: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy)
}

/// AVX2: `acc` + the eight int32 sums of u8×i8 quads (exact for u ≤ 127·255 / 255 per pair,
/// i.e. the 4- and 5-bit weights).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dp_avx2(acc: __m256i, ax: __m256i, sy: __m256i) -> __m256i {
    _mm256_add_epi32(acc, unsafe { mul_sum_avx2(ax, sy) })
}

/// AVX-512 VNNI: `acc` + u8×i8 quads in one `vpdpbusd`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn dp_vnni(acc: __m256i, ax: __m256i, sy: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, ax, sy)
}

/// AVX2: `acc` + pairs of i16 products (`vpmaddwd`, then an add).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dpw_avx2(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
}

/// AVX-512 VNNI: the same in one `vpdpwssd`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn dpw_vnni(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, a, b)
}

kernels!(
    avx2,
    "avx2,fma,f16c",
    mul_sum_avx2,
    dp_avx2,
    dpw_avx2,
    false
);
kernels!(
    vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    mul_sum_vnni,
    dp_vnni,
    dpw_vnni,
    true
);

/// One-token kernels with AVX-512 VBMI's two-table byte permute (`vpermt2b`).
///
/// The eight-row kernels above read eight rows side by side, so the memory sees eight short
/// interleaved streams and software prefetch has to carry them; every block also pays scalar
/// work to gather eight rows' scales. Here one row is read front to back in 64-byte loads:
/// eight Q4_0 blocks are 144 contiguous bytes (three loads), and two `vpermt2b` pick out the
/// four-block runs of nibble bytes, a third the eight f16 scales. The activation row was
/// regrouped once per token ([`Q8Row::regroup`]) so that those nibble runs, masked (elements
/// 0..16 of each block) or shifted (16..32), multiply it with plain 64-byte loads. Q4_K and
/// Q6_K super-blocks hold their quants contiguously; the same one-stream reading, with the
/// sub-block scales applied to packed 16-bit sums.
///
/// Measured (1.1B, tg A/B against the eight-row and row-by-row kernels, medians of 5–7):
/// Q4_0 32.0 → 34.2 tok/s at one thread, 54.3 → 60.2 at two; Q4_K_M 27.5 → 28.3 and
/// 42.7 → 44.1; Q6_K's part of Q4_K_M (`--no-mmap`) 42.1 → 43.8 at one thread. The same
/// treatment of Q5_K measured no faster and was left out. From L2 (`kernel_speed`) Q4_0 runs
/// at 33–34 GB/s against the eight-row kernel's 32, Q4_K at 29 against 30, Q6_K at 32 against
/// 28.5: the gain is the memory side (one stream per thread, no prefetch past its rows).
pub(super) mod vbmi {
    use super::*;

    /// Asks for the `LINES` cache lines from `p + VPF` on, if that is before `end` (the end of
    /// the calling thread's rows: the bytes after them are another thread's, read by it at the
    /// same time, and a prefetch there would fetch them a second time). A prefetch never
    /// faults; the check keeps the stream to our rows.
    #[inline(always)]
    fn prefetch_ahead<const LINES: usize>(p: *const u8, end: *const u8) {
        let ahead = p.wrapping_add(VPF);
        if ahead < end {
            for l in 0..LINES {
                // SAFETY: a prefetch reads nothing and cannot fault, whatever the address.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * l).cast()) };
            }
        }
    }

    /// How far ahead (bytes) the one-row kernels prefetch (measured from memory, one
    /// thread: 4 KB 18.7, 8 KB 22.6, 16 KB 23.4, 32 KB 23.7 GB/s; none 16.6).
    const VPF: usize = 16384;

    /// Byte k of the 128 bytes [v0 | v1] that lands in lane i, for four blocks of 18 bytes
    /// starting at block `first` (relative to the first load `skip` bytes in): nibble byte
    /// i % 16 of block first + i / 16, after its two scale bytes.
    /// (`valid`: how many of the 128 bytes were loaded; checked when the tables are built.)
    const fn nibble_index(first: usize, skip: usize, valid: usize) -> [u8; 64] {
        let mut idx = [0u8; 64];
        let mut i = 0;
        while i < 64 {
            let k = 18 * (first + i / 16) + 2 + i % 16 - skip;
            assert!(k < valid);
            idx[i] = k as u8;
            i += 1;
        }
        idx
    }

    /// Bytes 0..16 ← the eight blocks' f16 scales (block j's at 18j); the rest unused.
    const fn scale_index() -> [u8; 64] {
        let mut idx = [0u8; 64];
        let mut i = 0;
        while i < 16 {
            idx[i] = (18 * (i / 2) + i % 2) as u8;
            i += 1;
        }
        idx
    }

    /// Blocks 0..4 of a group from [bytes 0..64 | 64..128]; blocks 4..8 from
    /// [64..128 | 128..144]; the scales from [0..64 | 64..128] (block 7's ends at 128).
    static NIB_LO: [u8; 64] = nibble_index(0, 0, 128);
    static NIB_HI: [u8; 64] = nibble_index(4, 64, 64 + 16);
    static SCALES: [u8; 64] = scale_index();

    /// Q4_0 rows · one Q8 activation (one token): `out[r]` = row r · a, for the rows of
    /// `rb` bytes in `w`. Per row Σ_b d_w·d_a·Σ_i (u_i − 8)·a_i with the nibbles u = q + 8.
    /// Per group of eight blocks the integer sums of four blocks share one 16-lane
    /// accumulator (four lanes a block, two `vpdpbusd`: low nibbles, then high), converted
    /// once and multiplied by the blocks' d_w·d_a spread four lanes each. The −8 comes off at
    /// the end as 8·Σ_b d_w·(d_a·Σa) (`Q8Row::dsum`). Blocks after the last whole group of
    /// eight go one at a time.
    ///
    /// The rows are one stream; software prefetch runs [`VPF`] bytes ahead of it, but not
    /// past the end of `w`: the bytes after it are another thread's rows, which it read at
    /// the same time as these, so a prefetch there would fetch them a second time.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA and F16C; `w` is whole rows of whole
    /// Q4_0 blocks (`rb` bytes each, `out` one value per row); `a` holds as many quants,
    /// scales and sums as a row has elements, and `a.qp` is regrouped for every whole group
    /// of eight of them.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(super) unsafe fn q4_0_rows(w: &[u8], rb: usize, a: &Q8Row, out: &mut [f32]) {
        const BB: usize = std::mem::size_of::<BlockQ4_0>();
        let nb = rb / BB;
        let groups = nb / 8;
        debug_assert!(rb.is_multiple_of(BB) && w.len().is_multiple_of(rb));
        debug_assert!(out.len() >= w.len() / rb);
        debug_assert!(a.qp.len() == groups * 256 && a.qs.len() >= nb * QK);
        debug_assert!(a.d.len() >= nb && a.dsum.len() >= nb);
        let m4 = _mm512_set1_epi8(0x0F);
        // SAFETY: 64-byte tables.
        let (nib_lo, nib_hi, scales) = unsafe {
            (
                _mm512_loadu_si512(NIB_LO.as_ptr().cast()),
                _mm512_loadu_si512(NIB_HI.as_ptr().cast()),
                _mm512_loadu_si512(SCALES.as_ptr().cast()),
            )
        };
        // Block j's d_w·d_a into lanes 4j..4j+4 (blocks 0..4; +4 for blocks 4..8).
        let spread_lo = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        let spread_hi = _mm512_add_epi32(spread_lo, _mm512_set1_epi32(4));
        let m4y = _mm256_set1_epi8(0x0F);
        let shifts = _mm256_setr_epi64x(0, 0, 4, 4);
        // Prefetches stop here (one past the last byte of `w`).
        let end = w.as_ptr().wrapping_add(w.len());
        for (r, o) in out.iter_mut().enumerate().take(w.len() / rb) {
            let wp = w[r * rb..].as_ptr();
            let mut f_lo = _mm512_setzero_ps();
            let mut f_hi = _mm512_setzero_ps();
            // Σ_b d_w·d_a·Σa, for the −8.
            let mut corr = _mm256_setzero_ps();
            for g in 0..groups {
                // SAFETY (whole loop body): group g is bytes 144g..144g + 144 of the row (the
                // third load takes 16 bytes: 128..144); activation group g is
                // qp[256g..256g + 256], d and dsum [8g..8g + 8]. Prefetch addresses are
                // kept to our rows (`prefetch_ahead`).
                unsafe {
                    let p = wp.add(8 * BB * g);
                    prefetch_ahead::<3>(p, end);
                    let v0 = _mm512_loadu_si512(p.cast());
                    let v1 = _mm512_loadu_si512(p.add(64).cast());
                    let v2 = _mm512_zextsi128_si512(_mm_loadu_si128(p.add(128).cast()));
                    let q_lo = _mm512_permutex2var_epi8(v0, nib_lo, v1);
                    let q_hi = _mm512_permutex2var_epi8(v1, nib_hi, v2);
                    let dw = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi8(
                        v0, scales, v1,
                    )));
                    let ap = a.qp.as_ptr().add(256 * g);
                    let act = |k: usize| _mm512_loadu_si512(ap.add(64 * k).cast());
                    let lo_nib = |q: __m512i| _mm512_and_si512(q, m4);
                    let hi_nib = |q: __m512i| _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
                    let z = _mm512_setzero_si512();
                    let acc_lo = _mm512_dpbusd_epi32(
                        _mm512_dpbusd_epi32(z, lo_nib(q_lo), act(0)),
                        hi_nib(q_lo),
                        act(1),
                    );
                    let acc_hi = _mm512_dpbusd_epi32(
                        _mm512_dpbusd_epi32(z, lo_nib(q_hi), act(2)),
                        hi_nib(q_hi),
                        act(3),
                    );
                    let s = _mm256_mul_ps(dw, _mm256_loadu_ps(a.d.as_ptr().add(8 * g)));
                    corr = _mm256_fmadd_ps(dw, _mm256_loadu_ps(a.dsum.as_ptr().add(8 * g)), corr);
                    let s = _mm512_castps256_ps512(s);
                    f_lo = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(acc_lo),
                        _mm512_permutexvar_ps(spread_lo, s),
                        f_lo,
                    );
                    f_hi = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(acc_hi),
                        _mm512_permutexvar_ps(spread_hi, s),
                        f_hi,
                    );
                }
            }
            let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(f_lo, f_hi));
            let mut c = hsum(corr);
            // The last nb % 8 blocks: elements 0..16 in the low half of a vector, 16..32 in
            // the high half, against the activation block as it is.
            for b in 8 * groups..nb {
                // SAFETY: block b is within the row (16 nibble bytes after the scale);
                // activation block b within `a.qs`, `a.d`, `a.dsum`.
                unsafe {
                    let p = wp.add(BB * b);
                    let raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(2).cast()));
                    let u = _mm256_and_si256(_mm256_srlv_epi64(raw, shifts), m4y);
                    let q = _mm256_loadu_si256(a.qs.as_ptr().add(QK * b).cast());
                    let isum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, q);
                    let dw = f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32();
                    // At most 32·15·128 in magnitude: exact in f32.
                    let v = hsum(_mm256_cvtepi32_ps(isum));
                    sum += dw * *a.d.get_unchecked(b) * v;
                    c += dw * *a.dsum.get_unchecked(b);
                }
            }
            *o = sum - 8.0 * c;
        }
    }

    /// Q8_0 rows · one Q8 activation (one token): `out[r]` = row r · a, each row one stream.
    /// Per group of eight blocks (272 bytes): two blocks' 64 quants to a vector (a 32-byte
    /// load and a 32-byte insert from memory) against the activations taken as unsigned
    /// (a + 128, one `vpxor`) in one `vpdpbusd`, and the 128·Σq it adds comes off in the
    /// integers (a second `vpdpbusd` of 128s), exactly: eight lanes a block; the eight
    /// scales packed in general registers and converted together, times d_a, spread over
    /// each vector's two blocks by one permute. (Taking the weights as unsigned instead and
    /// removing 128·Σ d_w·d_a·Σa in floats at the end lost up to two digits where the
    /// activations have a large mean, enough to move a random model's sharp attention.)
    /// Against the block-at-a-time kernel (a scale broadcast, a conversion and an FMA per 32
    /// weights) this is a quarter of the float work. Blocks after the last whole group of
    /// eight go one at a time. Prefetch as in [`q4_0_rows`].
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `w` is whole rows of whole Q8_0
    /// blocks (`rb` bytes each, `out` one value per row); `a` holds as many quants and scales
    /// as a row has elements.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn q8_0_rows(w: &[u8], rb: usize, a: &Q8Row, out: &mut [f32]) {
        const BB: usize = std::mem::size_of::<BlockQ8_0>();
        let nb = rb / BB;
        let groups = nb / 8;
        debug_assert!(rb.is_multiple_of(BB) && w.len().is_multiple_of(rb));
        debug_assert!(out.len() >= w.len() / rb);
        debug_assert!(a.qs.len() >= nb * QK && a.d.len() >= nb);
        let flip = _mm512_set1_epi8(-128);
        // Vector k (blocks 2k, 2k + 1): lanes 0..8 take scale 2k, 8..16 scale 2k + 1.
        let spread: [__m512i; 4] = std::array::from_fn(|k| {
            let (x, y) = (2 * k as i32, 2 * k as i32 + 1);
            _mm512_setr_epi32(x, x, x, x, x, x, x, x, y, y, y, y, y, y, y, y)
        });
        let end = w.as_ptr().wrapping_add(w.len());
        for (r, o) in out.iter_mut().enumerate().take(w.len() / rb) {
            let wp = w[r * rb..].as_ptr();
            let mut acc = [_mm512_setzero_ps(); 2];
            for g in 0..groups {
                // SAFETY (whole loop body): group g is bytes 272g..272g + 272 of the row
                // (block j's scale at 34j, quants 34j + 2..34j + 34); activation group g is
                // qs[256g..256g + 256], d and dsum [8g..8g + 8]. Prefetch addresses are kept
                // to our rows (`prefetch_ahead`).
                unsafe {
                    let p = wp.add(8 * BB * g);
                    prefetch_ahead::<5>(p, end);
                    let dw =
                        _mm256_cvtph_ps(_mm_set_epi64x(scales4(p.add(4 * BB), BB), scales4(p, BB)));
                    let s = _mm256_mul_ps(dw, _mm256_loadu_ps(a.d.as_ptr().add(8 * g)));
                    let s = _mm512_castps256_ps512(s);
                    let ap = a.qs.as_ptr().add(256 * g);
                    for k in 0..4 {
                        let q = _mm512_inserti64x4(
                            _mm512_castsi256_si512(_mm256_loadu_si256(
                                p.add(2 * k * BB + 2).cast(),
                            )),
                            _mm256_loadu_si256(p.add((2 * k + 1) * BB + 2).cast()),
                            1,
                        );
                        let y = _mm512_loadu_si512(ap.add(64 * k).cast());
                        let z = _mm512_setzero_si512();
                        let isum = _mm512_sub_epi32(
                            _mm512_dpbusd_epi32(z, _mm512_xor_si512(y, flip), q),
                            _mm512_dpbusd_epi32(z, flip, q),
                        );
                        acc[k % 2] = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(isum),
                            _mm512_permutexvar_ps(spread[k], s),
                            acc[k % 2],
                        );
                    }
                }
            }
            let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
            for b in 8 * groups..nb {
                // SAFETY: block b is within the row; activation block b within `a.qs`, `a.d`.
                unsafe {
                    let p = wp.add(BB * b);
                    let q = _mm256_loadu_si256(p.add(2).cast());
                    let y = _mm256_loadu_si256(a.qs.as_ptr().add(QK * b).cast());
                    let (z, flip) = (_mm256_setzero_si256(), _mm256_set1_epi8(-128));
                    let isum = _mm256_sub_epi32(
                        _mm256_dpbusd_epi32(z, _mm256_xor_si256(y, flip), q),
                        _mm256_dpbusd_epi32(z, flip, q),
                    );
                    let dw = f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32();
                    // At most 32·127·128 in magnitude: exact in f32.
                    sum += dw * *a.d.get_unchecked(b) * hsum(_mm256_cvtepi32_ps(isum));
                }
            }
            *o = sum;
        }
    }

    /// The tables that turn a super-block's 32 2:4 codes (96 bits) into the byte indices of
    /// its 64 kept weights among the 128 activations: index 2g + j is 4g + (the j-th kept
    /// position of group g). Output byte k = 8q + i takes group g = k / 2 = 4q + i / 2, whose
    /// code is bits 3g..3g + 3 of the codes, i.e. bits 12q..12q + 12 of qword q's group:
    /// `CODE_BYTES` copies source bytes ⌊12q/8⌋.. into qword q (a `vpermb`), `CODE_SHIFTS`
    /// picks each byte's code from there (a `vpmultishiftqb`: 12q mod 8 + 3·(i / 2)), `ODD`
    /// adds 8 to the odd bytes (the second kept position), `CODE_POS` maps code + 8j to the
    /// position (a `vpshufb` in every 128-bit lane) and `GROUP_BASE` adds 4g.
    const fn code_tables() -> [[u8; 64]; 5] {
        let mut t = [[0u8; 64]; 5];
        let mut k = 0;
        while k < 64 {
            let (q, i) = (k / 8, k % 8);
            let start = 12 * q / 8;
            t[0][k] = if start + i < 16 { start + i } else { 15 } as u8;
            t[1][k] = (12 * q % 8 + 3 * (i / 2)) as u8;
            t[2][k] = if k % 2 == 1 { 8 } else { 0 };
            t[4][k] = (4 * (k / 2)) as u8;
            k += 1;
        }
        // Code c = b0 | b1 << 1 | b2 << 2 (b3 = b0 ⊕ b1 ⊕ b2): its two kept positions; 0 and 7
        // (malformed, refused by the loader) read position 0.
        let first: [u8; 8] = [0, 0, 1, 0, 2, 0, 1, 0];
        let second: [u8; 8] = [0, 3, 3, 1, 3, 2, 2, 0];
        let mut j = 0;
        while j < 64 {
            let v = j % 16;
            t[3][j] = if v < 8 { first[v] } else { second[v - 8] };
            j += 1;
        }
        t
    }
    static CODE_TABLES: [[u8; 64]; 5] = code_tables();

    /// Sparse rows ([`Sparse`]: `Q8_0_4:8`, `Q4_0_4:8`, `Q8_0_2:4`, `Q4_0_2:4`) · `N` Q8
    /// activations (one to four tokens): `out[r·N + t]` = row r · a[t], only the kept weights
    /// multiplied.
    ///
    /// Per super-block of 128 weights (52 to 88 bytes), each token's 64 activations at the
    /// kept positions are gathered: 4:8, its two 64-bit keep-masks (blocks 0–1, 2–3) loaded
    /// straight into mask registers compress the 128 activation bytes (`vpcompressb`, two of
    /// 64 → 32, joined); 2:4, the 3-bit codes become the 64 byte indices once per super-block
    /// (a `vpermb`, a `vpmultishiftqb`, a `vpshufb`: [`code_tables`]) and one two-table
    /// `vpermt2b` per token gathers them (fewer shuffle-port operations than two compresses).
    /// The kept weights are then one dense vector of 64 — loaded as stored (Q8_0), or the 32
    /// nibble bytes broadcast, shifted and masked (Q4_0: low nibbles, then high). The
    /// products take the activations as unsigned (a + 128, one `vpxor`) and the weights as
    /// signed, Σ(a + 128)·q = Σa·q + 128·Σq, and the 128·Σq comes off per block (one more
    /// `vpdpbusd`, shared by the tokens). Each block's integer sum (four lanes) is scaled by
    /// its d_w·d_a spread over its lanes, as in [`q4_0_rows`]. The rows stream with software
    /// prefetch as there.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI/VBMI/VBMI2, AVX2, FMA and F16C; `w` is whole
    /// rows of whole super-blocks (`rb` bytes each); `out` holds N values per row; every `a[t]` holds
    /// as many quants and block scales as a row has elements.
    #[target_feature(
        enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2"
    )]
    pub(super) unsafe fn sparse_rows<B: Sparse, const N: usize>(
        w: &[u8],
        rb: usize,
        a: &[&Q8Row; 4],
        out: &mut [f32],
    ) {
        let bb = std::mem::size_of::<B>();
        let (q4, hdr) = (B::Q4, B::HEADER);
        let nsb = rb / bb;
        debug_assert!(rb.is_multiple_of(bb) && w.len().is_multiple_of(rb));
        debug_assert!(out.len() >= w.len() / rb * N);
        debug_assert!((0..N).all(|t| a[t].qs.len() >= nsb * QS && a[t].d.len() >= nsb * 4));
        let flip = _mm512_set1_epi8(-128);
        let m4 = _mm512_set1_epi8(0x0F);
        let eight = _mm512_set1_epi8(8);
        // Q4: qwords 0..4 as they are (low nibbles), 4..8 shifted by 4 (high nibbles).
        let shifts = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
        // Block i / 4's scale into 32-bit lane i (the kept values are in order).
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        // SAFETY: 64-byte tables.
        let [code_bytes, code_shifts, odd, code_pos, group_base] =
            CODE_TABLES.map(|t| unsafe { _mm512_loadu_si512(t.as_ptr().cast()) });
        let seven = _mm512_set1_epi8(7);
        let end = w.as_ptr().wrapping_add(w.len());
        for r in 0..w.len() / rb {
            let wp = w[r * rb..].as_ptr();
            let mut acc = [_mm512_setzero_ps(); N];
            for sb in 0..nsb {
                // SAFETY (whole loop body): super-block sb is bytes bb·sb..bb·(sb + 1) of the
                // row: positions at 0..hdr, scales hdr..hdr + 8, values after; the activations' block
                // 4sb..4sb + 4 is quants 128sb..128sb + 128 and scales 4sb..4sb + 4 of every
                // a[t]. Prefetch addresses are kept to our rows (`prefetch_ahead`).
                unsafe {
                    let p = wp.add(bb * sb);
                    prefetch_ahead::<2>(p, end);
                    // 4:8: the masks as they are. 2:4: the kept weights' activation indices
                    // from the codes (`code_tables`; the 16-byte load ends in the scales).
                    let k01: __mmask64 = std::ptr::read_unaligned(p.cast::<u64>());
                    let k23: __mmask64 = std::ptr::read_unaligned(p.add(8).cast::<u64>());
                    let idx = if hdr == 12 {
                        let raw = _mm512_castsi128_si512(_mm_loadu_si128(p.cast()));
                        let codes = _mm512_multishift_epi64_epi8(
                            code_shifts,
                            _mm512_permutexvar_epi8(code_bytes, raw),
                        );
                        // (code & 7) | 8·odd, then the position, then + 4g.
                        let v = _mm512_ternarylogic_epi32::<0xEA>(codes, seven, odd);
                        _mm512_add_epi8(_mm512_shuffle_epi8(code_pos, v), group_base)
                    } else {
                        _mm512_setzero_si512()
                    };
                    let q = if q4 {
                        let raw = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(hdr + 8).cast()));
                        let u = _mm512_and_si512(_mm512_srlv_epi64(raw, shifts), m4);
                        _mm512_sub_epi8(u, eight)
                    } else {
                        _mm512_loadu_si512(p.add(hdr + 8).cast())
                    };
                    // 128·Σq per lane group, for every token.
                    let corr = _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, q);
                    let dw = _mm_cvtph_ps(_mm_loadl_epi64(p.add(hdr).cast()));
                    for t in 0..N {
                        let ap = a[t].qs.as_ptr().add(QS * sb);
                        let a01 = _mm512_loadu_si512(ap.cast());
                        let a23 = _mm512_loadu_si512(ap.add(64).cast());
                        let c = if hdr == 12 {
                            // One two-table byte permute gathers the 64.
                            _mm512_permutex2var_epi8(a01, idx, a23)
                        } else {
                            let c01 = _mm512_maskz_compress_epi8(k01, a01);
                            let c23 = _mm512_maskz_compress_epi8(k23, a23);
                            _mm512_inserti64x4(c01, _mm512_castsi512_si256(c23), 1)
                        };
                        let isum = _mm512_dpbusd_epi32(
                            _mm512_setzero_si512(),
                            _mm512_xor_si512(c, flip),
                            q,
                        );
                        let s4 = _mm_mul_ps(dw, _mm_loadu_ps(a[t].d.as_ptr().add(4 * sb)));
                        let s = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(s4));
                        acc[t] = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(_mm512_sub_epi32(isum, corr)),
                            s,
                            acc[t],
                        );
                    }
                }
            }
            for t in 0..N {
                out[r * N + t] = _mm512_reduce_add_ps(acc[t]);
            }
        }
    }

    /// Unstructured sparse rows (`crate::pool`: `n` weights each, `rb` bytes) · `N` Q8
    /// activations (one to four tokens): `out[r·N + t]` = row r · a[t].
    ///
    /// Per super-block of 128 weights, its two 64-bit keep-masks expand the next kept values
    /// of the row's pool to their positions (`vpexpandb`, from whole 64-byte loads while they
    /// stay within `w` — they may reach into the next rows —, from masked loads of exactly
    /// the bytes needed at its end); the pool position moves on by the masks' `popcnt` (the
    /// target feature matters: without it `count_ones` is a long bit-trick sequence). The row
    /// is prefetched as one stream, its bytes per super-block at a time. Then as the dense
    /// Q8_0 kernel ([`q8_0_rows`]): the activations as unsigned (a + 128)
    /// against the signed weights, 128·Σq off per block (shared by the tokens), each block's
    /// integer sum (eight lanes) scaled by its d_w·d_a. A super-block whose values would run
    /// past the pool (a malformed row, which the loader refuses) ends the row there.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI/VBMI/VBMI2, POPCNT, AVX2, FMA and F16C; `w` is whole
    /// rows of `rb` bytes, each the heads of n / 128 super-blocks and a pool; `out` holds N
    /// values per row; every `a[t]` holds n quants and n / 32 block scales.
    #[target_feature(
        enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,popcnt"
    )]
    pub(super) unsafe fn pooled_rows<const N: usize>(
        w: &[u8],
        rb: usize,
        n: usize,
        a: &[&Q8Row; 4],
        out: &mut [f32],
    ) {
        use crate::pool::HEAD;
        let nsb = n / QS;
        let hb = nsb * HEAD;
        debug_assert!(n.is_multiple_of(QS) && rb >= hb && w.len().is_multiple_of(rb));
        debug_assert!(out.len() >= w.len() / rb * N);
        debug_assert!((0..N).all(|t| a[t].qs.len() >= n && a[t].d.len() * QK >= n));
        let flip = _mm512_set1_epi8(-128);
        // Vector 0 (blocks 0, 1): lanes 0..8 take scale 0, 8..16 scale 1; vector 1: 2 and 3.
        let spread = [
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
        ];
        let end = w.as_ptr().wrapping_add(w.len());
        let room = rb - hb;
        let step = rb / nsb.max(1);
        // The first c bits (c ≤ 64).
        let low = |c: usize| -> __mmask64 {
            if c >= 64 {
                u64::MAX
            } else {
                (1u64 << c) - 1
            }
        };
        for r in 0..w.len() / rb {
            let hp = w[r * rb..].as_ptr();
            let pp = hp.wrapping_add(hb);
            let mut used = 0usize;
            let mut acc = [[_mm512_setzero_ps(); 2]; N];
            for sb in 0..nsb {
                // SAFETY (whole loop body): head sb is bytes 24sb..24sb + 24 of the row (masks,
                // then scales); the values' loads stay within `w` (whole ones checked against
                // its end, masked ones read c01 and c23 bytes from `used`, within the pool:
                // checked first); activation block 4sb..4sb + 4 is quants
                // 128sb..128sb + 128 and scales 4sb..4sb + 4 of every a[t]. Prefetch addresses
                // are kept to our rows (`prefetch_ahead`).
                unsafe {
                    let h = hp.add(HEAD * sb);
                    let k01: __mmask64 = std::ptr::read_unaligned(h.cast::<u64>());
                    let k23: __mmask64 = std::ptr::read_unaligned(h.add(8).cast::<u64>());
                    let (c01, c23) = (k01.count_ones() as usize, k23.count_ones() as usize);
                    if used + c01 + c23 > room {
                        break;
                    }
                    let v = pp.add(used);
                    // The row read as one stream (heads, then pool): its share of bytes per
                    // super-block, `step`, prefetched ahead (one line covers up to 64).
                    let ahead = hp.add(step * sb);
                    if step <= 64 {
                        prefetch_ahead::<1>(ahead, end);
                    } else {
                        prefetch_ahead::<2>(ahead, end);
                    }
                    // Whole 64-byte loads while they stay within `w`; masked ones at its end.
                    let (r01, r23) = if v.wrapping_add(c01 + 64) <= end {
                        (
                            _mm512_loadu_si512(v.cast()),
                            _mm512_loadu_si512(v.add(c01).cast()),
                        )
                    } else {
                        (
                            _mm512_maskz_loadu_epi8(low(c01), v.cast()),
                            _mm512_maskz_loadu_epi8(low(c23), v.add(c01).cast()),
                        )
                    };
                    let q01 = _mm512_maskz_expand_epi8(k01, r01);
                    let q23 = _mm512_maskz_expand_epi8(k23, r23);
                    used += c01 + c23;
                    let z = _mm512_setzero_si512();
                    let corr = [
                        _mm512_dpbusd_epi32(z, flip, q01),
                        _mm512_dpbusd_epi32(z, flip, q23),
                    ];
                    let dw = _mm_cvtph_ps(_mm_loadl_epi64(h.add(16).cast()));
                    for t in 0..N {
                        let ap = a[t].qs.as_ptr().add(QS * sb);
                        let a01 = _mm512_xor_si512(_mm512_loadu_si512(ap.cast()), flip);
                        let a23 = _mm512_xor_si512(_mm512_loadu_si512(ap.add(64).cast()), flip);
                        let s4 = _mm_mul_ps(dw, _mm_loadu_ps(a[t].d.as_ptr().add(4 * sb)));
                        let s = _mm512_castps128_ps512(s4);
                        for (h, (av, q)) in [(a01, q01), (a23, q23)].into_iter().enumerate() {
                            let isum = _mm512_sub_epi32(_mm512_dpbusd_epi32(z, av, q), corr[h]);
                            acc[t][h] = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(isum),
                                _mm512_permutexvar_ps(spread[h], s),
                                acc[t][h],
                            );
                        }
                    }
                }
            }
            for t in 0..N {
                out[r * N + t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
            }
        }
    }

    /// `vpshufb` controls that spread the eight sub-block scales (words 0..8 of every 128-bit
    /// lane) over the 16-bit sums of two packed vectors: `vpackssdw` of the sums of sub-blocks
    /// (s, s + 2 | s + 1, s + 3) puts, in 128-bit lanes 0 and 1, four words of s then four of
    /// s + 1, in lanes 2 and 3 four of s + 2 then four of s + 3 (s = 0, then 4).
    const fn scale_words(first: u16) -> [u16; 32] {
        let mut idx = [0u16; 32];
        let mut i = 0;
        while i < 32 {
            // Word i of the 32: 128-bit lane i / 8, word i % 8 of it.
            let w = first + if i < 16 { 0 } else { 2 } + (i as u16 % 8) / 4;
            idx[i] = (2 * w) | ((2 * w + 1) << 8);
            i += 1;
        }
        idx
    }
    static SUB_SCALES: [[u16; 32]; 2] = [scale_words(0), scale_words(4)];

    /// Q4_K rows · one Q8_K activation (one token): `out[r]` = row r · a. Per super-block:
    /// d_a·(d·Σ_s sc_s·Σ_i q_i·a_i − dmin·Σ_s m_s·Σa_s) over the eight sub-blocks s of 32.
    /// The 128 nibble bytes are two 64-byte loads; masked and shifted they are four vectors
    /// of two sub-blocks each, multiplied by the regrouped activation ([`Q8KRow::regroup`])
    /// into 32-bit sums of four (`vpdpbusd`; at most 4·15·127, so two vectors' sums pack into
    /// one of 16-bit words, `vpackssdw`), and those times the sub-blocks' scales into 32-bit
    /// sums (`vpmaddwd`). Against `vpmaddubsw` + `vpmaddwd` per vector this is six multiplies
    /// for eight (from L2: 28.1 → 28.9 GB/s). The mins: one `vpmaddwd` of the eight m_s by
    /// the sub-block sums `ssum`. One row is one stream, prefetched as in [`q4_0_rows`].
    ///
    /// # Safety
    /// As [`q4_0_rows`], for Q4_K blocks and a Q8_K activation whose `qp` and `ssum` are
    /// regrouped for the whole row.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(super) unsafe fn q4_k_rows(w: &[u8], rb: usize, a: &Q8KRow, out: &mut [f32]) {
        const BB: usize = std::mem::size_of::<BlockQ4K>();
        let nb = rb / BB;
        debug_assert!(rb.is_multiple_of(BB) && w.len().is_multiple_of(rb));
        debug_assert!(out.len() >= w.len() / rb);
        debug_assert!(a.qp.len() >= nb * QK_K && a.ssum.len() >= nb * 8 && a.d.len() >= nb);
        let m4 = _mm512_set1_epi8(0x0F);
        // SAFETY: two tables of 32 words.
        let sub: [__m512i; 2] =
            std::array::from_fn(|k| unsafe { _mm512_loadu_si512(SUB_SCALES[k].as_ptr().cast()) });
        let end = w.as_ptr().wrapping_add(w.len());
        for (r, o) in out.iter_mut().enumerate().take(w.len() / rb) {
            let wp = w[r * rb..].as_ptr();
            let mut f = _mm512_setzero_ps();
            // Σ dmin·d_a·Σ_s m_s·Σa_s, four lanes.
            let mut fm = _mm_setzero_ps();
            for b in 0..nb {
                // SAFETY (whole loop body): super-block b is bytes 144b..144b + 144 of the row
                // (d, dmin, 12 scale bytes, 128 nibble bytes); activation super-block b is
                // qp[256b..256b + 256], ssum[8b..8b + 8], d[b]. Prefetches as in q4_0_rows.
                unsafe {
                    let p = wp.add(BB * b);
                    prefetch_ahead::<3>(p, end);
                    // [d, dmin]·d_a.
                    let dd = _mm_mul_ps(
                        _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned())),
                        _mm_set1_ps(*a.d.get_unchecked(b)),
                    );
                    let (sc, mn) = k4_unpack(&*p.add(4).cast::<[u8; 12]>());
                    let sc16 =
                        _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
                    let scb = _mm512_broadcast_i32x4(_mm512_castsi512_si128(sc16));
                    let q0 = _mm512_loadu_si512(p.add(16).cast());
                    let q1 = _mm512_loadu_si512(p.add(80).cast());
                    let nib = [
                        _mm512_and_si512(q0, m4),
                        _mm512_and_si512(_mm512_srli_epi16(q0, 4), m4),
                        _mm512_and_si512(q1, m4),
                        _mm512_and_si512(_mm512_srli_epi16(q1, 4), m4),
                    ];
                    let ap = a.qp.as_ptr().add(QK_K * b);
                    let dp = |k: usize| {
                        let act = _mm512_loadu_si512(ap.add(64 * k).cast());
                        _mm512_dpbusd_epi32(_mm512_setzero_si512(), nib[k], act)
                    };
                    // Per vector pair: 16-bit sums (≤ 4·15·127: no saturation) side by side,
                    // then times the scales into 32-bit sums.
                    let pk01 = _mm512_packs_epi32(dp(0), dp(1));
                    let pk23 = _mm512_packs_epi32(dp(2), dp(3));
                    let acc_a = _mm512_madd_epi16(pk01, _mm512_shuffle_epi8(scb, sub[0]));
                    let acc_b = _mm512_madd_epi16(pk23, _mm512_shuffle_epi8(scb, sub[1]));
                    f = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(_mm512_add_epi32(acc_a, acc_b)),
                        _mm512_broadcastss_ps(dd),
                        f,
                    );
                    let m16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
                    let ms =
                        _mm_madd_epi16(m16, _mm_loadu_si128(a.ssum.as_ptr().add(8 * b).cast()));
                    fm = _mm_fmadd_ps(_mm_cvtepi32_ps(ms), _mm_permute_ps::<0x55>(dd), fm);
                }
            }
            // Σ over the four lanes of fm: halves, then pairs.
            let fm = _mm_add_ps(fm, _mm_movehl_ps(fm, fm));
            let fm = _mm_add_ss(fm, _mm_movehdup_ps(fm));
            *o = _mm512_reduce_add_ps(f) - _mm_cvtss_f32(fm);
        }
    }

    /// Word indices for Q6_K's packed sums: in 128-bit lane L, four words of group
    /// `first + L` then four of `first + L + 4` (see [`q6_k_rows`]).
    const fn q6_scale_index(first: u16) -> [u16; 32] {
        let mut idx = [0u16; 32];
        let mut i = 0;
        while i < 32 {
            let lane = i as u16 / 8;
            idx[i] = first + lane + if i % 8 < 4 { 0 } else { 4 };
            i += 1;
        }
        idx
    }
    static Q6_SCALES: [[u16; 32]; 2] = [q6_scale_index(0), q6_scale_index(8)];

    /// Q6_K rows · one Q8_K activation (one token): `out[r]` = row r · a. Per half
    /// super-block (128 weights) the 64 bytes of low nibbles are one load and the 32 bytes of
    /// high bits one broadcast load; elements 0..64 of the half are the low nibbles with qh
    /// bits 0–1 (bytes 0..32) and 2–3 (32..64) moved to bits 4–5, elements 64..128 the high
    /// nibbles with bits 4–5 and 6–7 (a per-half shift `vpsllvw`/`vpsrlvw`, a mask, and one
    /// `vpternlogd` to merge): unsigned u = q + 32, in the activation's own order. Each
    /// vector's `vpdpbusd` sums (≤ 4·63·127: 16 bits) are packed in pairs (`vpackssdw`) and
    /// multiplied by the groups' signed scales (`vpmaddwd`). The offset comes off per
    /// super-block: 32·Σ_g sc_g·bsum_g. One row is one stream, prefetched as in
    /// [`q4_0_rows`].
    ///
    /// # Safety
    /// As [`q4_0_rows`], for Q6_K blocks and a Q8_K activation (not regrouped).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    pub(super) unsafe fn q6_k_rows(w: &[u8], rb: usize, a: &Q8KRow, out: &mut [f32]) {
        const BB: usize = std::mem::size_of::<BlockQ6K>();
        let nb = rb / BB;
        debug_assert!(rb.is_multiple_of(BB) && w.len().is_multiple_of(rb));
        debug_assert!(out.len() >= w.len() / rb);
        debug_assert!(a.qs.len() >= nb * QK_K && a.bsums.len() >= nb * 16 && a.d.len() >= nb);
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        // qh bits 2k, 2k+1 → bits 4, 5: k = 0 | 1 shift left by 4 | 2, k = 2 | 3 right by 0 | 2.
        let up = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
        let down = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
        // SAFETY: two tables of 32 words.
        let spread: [__m512i; 2] =
            std::array::from_fn(|h| unsafe { _mm512_loadu_si512(Q6_SCALES[h].as_ptr().cast()) });
        let end = w.as_ptr().wrapping_add(w.len());
        for (r, o) in out.iter_mut().enumerate().take(w.len() / rb) {
            let wp = w[r * rb..].as_ptr();
            let mut f = _mm512_setzero_ps();
            // Σ 32·d·d_a·Σ_g sc_g·bsum_g, eight lanes.
            let mut fo = _mm256_setzero_ps();
            for b in 0..nb {
                // SAFETY (whole loop body): super-block b is bytes 210b..210b + 210 of the row
                // (ql 128, qh 64, scales 16, d 2); activation super-block b is qs[256b..],
                // bsums[16b..16b + 16], d[b]. Prefetches as in q4_0_rows.
                unsafe {
                    let p = wp.add(BB * b);
                    prefetch_ahead::<4>(p, end);
                    let d = f16::from_bits(u16::from_le_bytes([*p.add(208), *p.add(209)])).to_f32()
                        * *a.d.get_unchecked(b);
                    // The sixteen signed scales as words.
                    let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192).cast()));
                    let scz = _mm512_castsi256_si512(sc);
                    let ap = a.qs.as_ptr().add(QK_K * b);
                    let mut acc = _mm512_setzero_si512();
                    for h in 0..2 {
                        let l = _mm512_loadu_si512(p.add(64 * h).cast());
                        let hb =
                            _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(128 + 32 * h).cast()));
                        let t_lo = _mm512_and_si512(_mm512_sllv_epi16(hb, up), m30);
                        let t_hi = _mm512_and_si512(_mm512_srlv_epi16(hb, down), m30);
                        // (A & 0x0F) | B.
                        let u_lo = _mm512_ternarylogic_epi32::<0xEC>(l, t_lo, m4);
                        let u_hi =
                            _mm512_ternarylogic_epi32::<0xEC>(_mm512_srli_epi16(l, 4), t_hi, m4);
                        let act = |k: usize| _mm512_loadu_si512(ap.add(128 * h + 64 * k).cast());
                        let z = _mm512_setzero_si512();
                        let pk = _mm512_packs_epi32(
                            _mm512_dpbusd_epi32(z, u_lo, act(0)),
                            _mm512_dpbusd_epi32(z, u_hi, act(1)),
                        );
                        acc =
                            _mm512_dpwssd_epi32(acc, pk, _mm512_permutexvar_epi16(spread[h], scz));
                    }
                    f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(d), f);
                    // 32·Σ_g sc_g·bsum_g: the group sums (|·| ≤ 16·127) as words.
                    let bs = _mm512_cvtepi32_epi16(_mm512_loadu_si512(
                        a.bsums.as_ptr().add(16 * b).cast(),
                    ));
                    let off = _mm256_madd_epi16(sc, bs);
                    fo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(off), _mm256_set1_ps(32.0 * d), fo);
                }
            }
            *o = _mm512_reduce_add_ps(f) - hsum(fo);
        }
    }
}
