//! Attention of one token's query heads against cached keys and values.
//!
//! The cache may hold F32 or F16 (half the bytes: a batched decode step reads every
//! sequence's keys and values, which for many sequences weighs as much as the weights). The
//! AVX2 kernel and its scalar twin give the same bits: the same fused multiply-adds in the
//! same order, and F16 → F32 conversion is exact (tested below).

use half::f16;

use crate::blocks::{f16_le, BlockQ8_0, QK};
use crate::cpu::Isa;
use crate::ops::softmax_fast;

/// An element type of a KV cache: a float (one value per element) or a quantized block
/// (Q8_0: 32 values per element).
///
/// # Safety
/// Implementors are plain data: every bit pattern, the all-zero one (= 0.0) included, is a
/// valid value, so pools may be allocated zeroed (lazily, by the OS) rather than written.
pub unsafe trait KvElem: Copy + Send + Sync + 'static {
    /// Values per element.
    const PER: usize;
    /// Bytes per element.
    const BYTES: usize;
    /// Stores one head's row of values (`dst.len() · PER` of them).
    fn store_row(src: &[f32], dst: &mut [Self]);
    /// Value i of a row, exactly as the kernels see it.
    fn value(row: &[Self], i: usize) -> f32;
    /// The whole row as f32 (`out.len()` values; the same as [`KvElem::value`]).
    fn load_row(row: &[Self], out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = Self::value(row, i);
        }
    }
    /// q·k for four rows (`AVX`: only inside functions compiled with AVX2, FMA and F16C).
    fn dot4<const AVX: bool>(q: &[f32], k: [&[Self]; 4]) -> [f32; 4];
    /// o += Σᵣ s[r]·v[r] over four rows.
    fn axpy4<const AVX: bool>(o: &mut [f32], s: [f32; 4], v: [&[Self]; 4]);
}

/// The kernels of an element type: the AVX2 versions where `AVX` (checked by the caller),
/// the scalar twins otherwise.
macro_rules! kv_elem_kernels {
    ($dot:ident, $axpy:ident) => {
        #[inline(always)]
        fn dot4<const AVX: bool>(q: &[f32], k: [&[Self]; 4]) -> [f32; 4] {
            #[cfg(target_arch = "x86_64")]
            if AVX {
                // SAFETY: AVX is true only in `attend_group_avx2`, run when the CPU has AVX2,
                // FMA and F16C.
                return unsafe { x86::$dot(q, k) };
            }
            dot4_scalar(q, k)
        }
        #[inline(always)]
        fn axpy4<const AVX: bool>(o: &mut [f32], s: [f32; 4], v: [&[Self]; 4]) {
            #[cfg(target_arch = "x86_64")]
            if AVX {
                // SAFETY: as in `dot4`.
                return unsafe { x86::$axpy(o, s, v) };
            }
            axpy4_scalar(o, s, v)
        }
    };
}

// SAFETY: f32 is a plain float; all-zero bits are 0.0.
unsafe impl KvElem for f32 {
    const PER: usize = 1;
    const BYTES: usize = 4;
    fn store_row(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn value(row: &[f32], i: usize) -> f32 {
        row[i]
    }
    fn load_row(row: &[f32], out: &mut [f32]) {
        out.copy_from_slice(&row[..out.len()]);
    }
    kv_elem_kernels!(dot4_f32, axpy4_f32);
}

// SAFETY: f16 is a plain 16-bit float; all-zero bits are 0.0.
unsafe impl KvElem for f16 {
    const PER: usize = 1;
    const BYTES: usize = 2;
    fn store_row(src: &[f32], dst: &mut [f16]) {
        for (d, x) in dst.iter_mut().zip(src) {
            *d = f16::from_f32(*x);
        }
    }
    #[inline(always)]
    fn value(row: &[f16], i: usize) -> f32 {
        row[i].to_f32()
    }
    fn load_row(row: &[f16], out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        // Exact, like `value` (F16C where the CPU has it).
        row[..out.len()].convert_to_f32_slice(out);
    }
    kv_elem_kernels!(dot4_f16, axpy4_f16);
}

// SAFETY: a Q8_0 block is bytes (an f16 scale and 32 i8); all-zero bytes are a zero block.
unsafe impl KvElem for BlockQ8_0 {
    const PER: usize = QK;
    const BYTES: usize = std::mem::size_of::<BlockQ8_0>();
    fn store_row(src: &[f32], dst: &mut [BlockQ8_0]) {
        // llama.cpp's Q8_0 rounding (d = max|x| / 127, q = round(x / d)).
        let mut buf = [0u8; 34];
        for (blk, x) in dst.iter_mut().zip(src.chunks_exact(QK)) {
            crate::quant::q8_0_block(x, &mut buf);
            blk.d = [buf[0], buf[1]];
            blk.qs.copy_from_slice(&buf[2..]);
        }
    }
    /// d · q: an f16 scale (11 significant bits) times an 8-bit integer is exact in f32.
    #[inline(always)]
    fn value(row: &[BlockQ8_0], i: usize) -> f32 {
        let b = &row[i / QK];
        f16_le(b.d) * (b.qs[i % QK] as i8) as f32
    }
    kv_elem_kernels!(dot4_q8_0, axpy4_q8_0);
}

/// Where one layer's cached keys and values live, position by position: a sequence's rows may
/// sit in two segments (a shared prompt prefix and its own rows) or in fixed-size blocks of a
/// paged pool. `key(p, h)` is KV head h's `head_dim` elements at position p.
pub trait KvRows {
    type Elem: KvElem;
    fn key(&self, p: usize, head: usize) -> &[Self::Elem];
    fn value(&self, p: usize, head: usize) -> &[Self::Elem];
}

/// Rows in up to two segments: positions `0..split` are rows of `keys[0]` / `values[0]` (the
/// shared prefix), the rest rows of `keys[1]` / `values[1]`; rows are `stride` floats apart
/// (every KV head's `hd` floats in turn).
#[derive(Debug, Clone, Copy)]
pub struct Segmented<'a> {
    pub keys: [&'a [f32]; 2],
    pub values: [&'a [f32]; 2],
    pub split: usize,
    pub stride: usize,
    pub hd: usize,
}

impl Segmented<'_> {
    #[inline(always)]
    fn at<'s>(&self, seg: [&'s [f32]; 2], p: usize, head: usize) -> &'s [f32] {
        // The branch goes the same way for long runs of p.
        let (s, r) = if p < self.split {
            (seg[0], p)
        } else {
            (seg[1], p - self.split)
        };
        let o = r * self.stride + head * self.hd;
        &s[o..o + self.hd]
    }
}

impl KvRows for Segmented<'_> {
    type Elem = f32;
    #[inline(always)]
    fn key(&self, p: usize, head: usize) -> &[f32] {
        self.at(self.keys, p, head)
    }
    #[inline(always)]
    fn value(&self, p: usize, head: usize) -> &[f32] {
        self.at(self.values, p, head)
    }
}

/// Rows in a paged pool, head-major inside each block so that one head's positions are
/// contiguous (`[n_blocks, n_kv_head, B, row]`, B = 2^`block_shift`, `row` = elements per
/// head row = head_dim / T::PER): position p of head h is row `p mod B` of head h in block
/// `table[p / B]`. `keys` / `values` are one layer's pool.
#[derive(Debug, Clone, Copy)]
pub struct Paged<'a, T> {
    pub keys: &'a [T],
    pub values: &'a [T],
    pub table: &'a [u32],
    pub block_shift: u32,
    pub n_kv_head: usize,
    pub row: usize,
}

impl<T> Paged<'_, T> {
    #[inline(always)]
    fn offset(&self, p: usize, head: usize) -> usize {
        let b = self.table[p >> self.block_shift] as usize;
        (((b * self.n_kv_head + head) << self.block_shift) + (p & ((1 << self.block_shift) - 1)))
            * self.row
    }
}

impl<T: KvElem> KvRows for Paged<'_, T> {
    type Elem = T;
    #[inline(always)]
    fn key(&self, p: usize, head: usize) -> &[T] {
        let o = self.offset(p, head);
        &self.keys[o..o + self.row]
    }
    #[inline(always)]
    fn value(&self, p: usize, head: usize) -> &[T] {
        let o = self.offset(p, head);
        &self.values[o..o + self.row]
    }
}

/// Causal attention of the query heads that share one KV head, for one token:
/// for each head g, s = softmax(q_g · K[p]ᵀ · scale) over positions p < len, then
/// out_g = Σ_p s[p] · V[p], over positions `start..len` (`start` > 0 for a sliding window).
/// `q` is `[group, hd]`; `rows` gives KV head `head`'s cached rows by position; `softcap` > 0
/// replaces each scaled score s by softcap·tanh(s/softcap) (Gemma 2); `scores` is scratch of
/// at least `group · (len − start)`; `out` is `[group, hd]`.
#[allow(clippy::too_many_arguments)]
pub fn attend_group<R: KvRows>(
    isa: Isa,
    q: &[f32],
    rows: &R,
    head: usize,
    hd: usize,
    start: usize,
    len: usize,
    scale: f32,
    softcap: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: Avx2 or better is reported by run-time detection only when AVX2, FMA and
        // F16C are present.
        unsafe { attend_group_avx2(q, rows, head, hd, start, len, scale, softcap, scores, out) };
        return;
    }
    let _ = isa;
    attend_group_body::<false, R>(q, rows, head, hd, start, len, scale, softcap, scores, out)
}

/// The same code with the AVX2/FMA/F16C helpers inlined.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_group_avx2<R: KvRows>(
    q: &[f32],
    rows: &R,
    head: usize,
    hd: usize,
    start: usize,
    len: usize,
    scale: f32,
    softcap: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_group_body::<true, R>(q, rows, head, hd, start, len, scale, softcap, scores, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_group_body<const AVX: bool, R: KvRows>(
    q: &[f32],
    rows: &R,
    head: usize,
    hd: usize,
    start: usize,
    len: usize,
    scale: f32,
    softcap: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = q.len() / hd;
    // Positions start..len take part (a sliding window starts after 0); scores are [group, m].
    let m = len - start;
    let cap = |s: f32| {
        let s = s * scale;
        // Gemma 2 caps the scores: c·tanh(s/c) (0 = off).
        if softcap > 0.0 {
            softcap * (s / softcap).tanh()
        } else {
            s
        }
    };
    // Scores, four positions at a time: four independent chains of fused multiply-adds
    // instead of one (a single accumulator waits on each FMA's latency).
    let mut p = start;
    while p < len {
        // The last group repeats its final row (the spare results are not stored).
        let ks: [&[R::Elem]; 4] = std::array::from_fn(|i| rows.key((p + i).min(len - 1), head));
        for g in 0..group {
            let d = R::Elem::dot4::<AVX>(&q[g * hd..(g + 1) * hd], ks);
            for (i, v) in d.into_iter().enumerate().take(len - p) {
                scores[g * m + p + i - start] = cap(v);
            }
        }
        p += 4;
    }
    // The polynomial exp, in vectors on the AVX path (the same bits as the scalar one).
    let isa = if AVX { Isa::Avx2 } else { Isa::Scalar };
    for g in 0..group {
        softmax_fast(isa, &mut scores[g * m..(g + 1) * m]);
    }
    out[..group * hd].fill(0.0);
    // Values, four positions per pass over the output: a quarter of the loads and stores.
    let mut p = start;
    while p < len {
        let vs: [&[R::Elem]; 4] = std::array::from_fn(|i| rows.value((p + i).min(len - 1), head));
        for g in 0..group {
            // Past the end the weights are 0: adding 0·v leaves the output as it is.
            let s: [f32; 4] = std::array::from_fn(|i| {
                if p + i < len {
                    scores[g * m + p + i - start]
                } else {
                    0.0
                }
            });
            R::Elem::axpy4::<AVX>(&mut out[g * hd..(g + 1) * hd], s, vs);
        }
        p += 4;
    }
}

/// Floats of scratch [`attend_tile`] needs for `nt` tokens of `group` heads of `hd`, the first
/// seeing `len0` positions.
pub fn attend_tile_scratch(nt: usize, group: usize, hd: usize, len0: usize) -> usize {
    let packs = (nt * group).div_ceil(8);
    let m8 = (len0 + nt).next_multiple_of(8);
    packs * 8 * (2 * hd + m8 + 1) + 8 * hd
}

/// Causal attention of a tile of consecutive query tokens of one sequence (prompt
/// processing), for the query heads that share KV head `head`: token i of the tile sees
/// positions 0..`len0` + i (no sliding window, no soft cap). `qs[i]` and `outs[i]` are token
/// i's `[group, hd]`; `scratch` holds at least [`attend_tile_scratch`] floats. Returns false
/// (and writes nothing) when `hd` is not a multiple of 8 or `scratch` is short.
///
/// The tile's query vectors (token, head) are lanes of eight-wide vectors, so that no dot
/// product needs a horizontal sum: with Qᵀ as `[hd][8 lanes]`, the scores of eight lanes
/// against key p are Σ_d Qᵀ[d]·k_p[d] (one FMA per dimension, the key element broadcast),
/// eight keys at a time in eight accumulators; the softmax runs across positions with the
/// lanes in the vector; and Oᵀ[d] += P[p]·v_p[d] the same way. Each key and value row is
/// converted to f32 once per tile and read from L1 by every lane. Token by token
/// ([`attend_group`]), a q·k of 64 took eight FMAs and a horizontal sum per head and the keys
/// were re-read per token: attention was 13 % of a one-thread pp512, a third of the FMA peak.
///
/// A twin of its own (not [`attend_group`]'s bits: each dot product is one chain of FMAs
/// over d, and the output is normalised after Σ e·v); the scalar and AVX2 versions give the
/// same bits.
#[allow(clippy::too_many_arguments)]
pub fn attend_tile<R: KvRows>(
    isa: Isa,
    qs: &[&[f32]],
    rows: &R,
    head: usize,
    hd: usize,
    len0: usize,
    scale: f32,
    scratch: &mut [f32],
    outs: &mut [&mut [f32]],
) -> bool {
    let nt = qs.len().min(outs.len());
    if nt == 0 || len0 == 0 || hd == 0 || !hd.is_multiple_of(8) {
        return false;
    }
    let group = qs[0].len() / hd;
    if group == 0
        || scratch.len() < attend_tile_scratch(nt, group, hd, len0)
        || qs[..nt].iter().any(|q| q.len() < group * hd)
        || outs[..nt].iter().any(|o| o.len() < group * hd)
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: Avx2 or better is reported by run-time detection only when AVX2, FMA and
        // F16C are present.
        unsafe { attend_tile_avx2(&qs[..nt], rows, head, hd, len0, scale, scratch, outs) };
        return true;
    }
    let _ = isa;
    attend_tile_body::<false, R>(&qs[..nt], rows, head, hd, len0, scale, scratch, outs);
    true
}

/// The same code with the AVX2/FMA/F16C helpers inlined.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_tile_avx2<R: KvRows>(
    qs: &[&[f32]],
    rows: &R,
    head: usize,
    hd: usize,
    len0: usize,
    scale: f32,
    scratch: &mut [f32],
    outs: &mut [&mut [f32]],
) {
    attend_tile_body::<true, R>(qs, rows, head, hd, len0, scale, scratch, outs)
}

/// The sizes were checked by [`attend_tile`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_tile_body<const AVX: bool, R: KvRows>(
    qs: &[&[f32]],
    rows: &R,
    head: usize,
    hd: usize,
    len0: usize,
    scale: f32,
    scratch: &mut [f32],
    outs: &mut [&mut [f32]],
) {
    let nt = qs.len();
    let group = qs[0].len() / hd;
    let lanes = nt * group;
    let packs = lanes.div_ceil(8);
    // Positions seen by the last token; scores are [pack, m8, 8 lanes].
    let m = len0 + nt - 1;
    let m8 = (len0 + nt).next_multiple_of(8);
    let (qt, rest) = scratch.split_at_mut(packs * hd * 8); // [pack, hd, 8]
    let (s, rest) = rest.split_at_mut(packs * m8 * 8); // [pack, m8, 8]
    let (ot, rest) = rest.split_at_mut(packs * hd * 8); // [pack, hd, 8]
    let (sums, rest) = rest.split_at_mut(packs * 8); // [pack, 8]
    let kb = &mut rest[..8 * hd]; // [8 positions, hd]
                                  // Lane L = token L / group, head L % group; lanes past the tile are zero queries that
                                  // see everything (their results are dropped).
    let len_of = |lane: usize| {
        if lane < lanes {
            len0 + lane / group
        } else {
            m
        }
    };
    for (pk, q) in qt.chunks_exact_mut(hd * 8).enumerate() {
        for l in 0..8 {
            let lane = pk * 8 + l;
            for d in 0..hd {
                q[d * 8 + l] = if lane < lanes {
                    qs[lane / group][(lane % group) * hd + d]
                } else {
                    0.0
                };
            }
        }
    }
    // The longest length among a pack's lanes (its last real lane's).
    let pack_len = |pk: usize| len_of((pk * 8 + 7).min(lanes - 1));
    let mut p0 = 0;
    while p0 < m {
        // Rows past the last position repeat it (masked below).
        for (k, row) in kb.chunks_exact_mut(hd).enumerate() {
            R::Elem::load_row(rows.key((p0 + k).min(m - 1), head), row);
        }
        for pk in 0..packs {
            if p0 >= pack_len(pk) {
                continue;
            }
            let out = &mut s[(pk * m8 + p0) * 8..(pk * m8 + p0 + 8) * 8];
            scores8::<AVX>(&qt[pk * hd * 8..(pk + 1) * hd * 8], kb, hd, scale, out);
            // Causal mask: position p is −∞ for lanes of length ≤ p.
            if p0 + 8 > len_of(pk * 8) {
                for k in 0..8 {
                    for l in 0..8 {
                        if p0 + k >= len_of(pk * 8 + l) {
                            out[k * 8 + l] = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        p0 += 8;
    }
    for pk in 0..packs {
        let n = pack_len(pk).next_multiple_of(8);
        softmax8::<AVX>(
            &mut s[pk * m8 * 8..(pk * m8 + n) * 8],
            &mut sums[pk * 8..pk * 8 + 8],
        );
    }
    ot.fill(0.0);
    let mut p0 = 0;
    while p0 < m {
        for (k, row) in kb.chunks_exact_mut(hd).enumerate() {
            R::Elem::load_row(rows.value((p0 + k).min(m - 1), head), row);
        }
        for pk in 0..packs {
            let len = pack_len(pk);
            if p0 >= len {
                continue;
            }
            let np = (len - p0).min(8);
            let sp = &s[(pk * m8 + p0) * 8..(pk * m8 + p0 + np) * 8];
            pv8::<AVX>(sp, kb, hd, &mut ot[pk * hd * 8..(pk + 1) * hd * 8]);
        }
        p0 += 8;
    }
    for lane in 0..lanes {
        let (pk, l) = (lane / 8, lane % 8);
        let inv = 1.0 / sums[lane];
        let o = &mut outs[lane / group][(lane % group) * hd..(lane % group + 1) * hd];
        for (d, v) in o.iter_mut().enumerate() {
            *v = ot[(pk * hd + d) * 8 + l] * inv;
        }
    }
}

/// Scores of eight lanes (`qt`: `[hd][8]`) against eight keys (`kb`: `[8][hd]`), times
/// `scale`: `out[k·8 + l]` = scale · Σ_d qt[d][l]·kb[k][d], one FMA chain over d.
#[inline(always)]
fn scores8<const AVX: bool>(qt: &[f32], kb: &[f32], hd: usize, scale: f32, out: &mut [f32]) {
    assert!(qt.len() >= 8 * hd && kb.len() >= 8 * hd && out.len() >= 64);
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is true only inside `attend_tile_avx2` (AVX2 and FMA present); the
        // sizes are asserted above.
        unsafe { x86::scores8(qt, kb, hd, scale, out) };
        return;
    }
    for k in 0..8 {
        for l in 0..8 {
            let mut acc = 0f32;
            for d in 0..hd {
                acc = qt[d * 8 + l].mul_add(kb[k * hd + d], acc);
            }
            out[k * 8 + l] = acc * scale;
        }
    }
}

/// Softmax over positions (rows of `s`: `[n][8]`) for each of eight lanes, unnormalised:
/// e = exp(s − max) in place, `sums[l]` = Σ e in position order.
#[inline(always)]
fn softmax8<const AVX: bool>(s: &mut [f32], sums: &mut [f32]) {
    assert!(s.len().is_multiple_of(8) && sums.len() >= 8);
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: as in `scores8`.
        unsafe { x86::softmax8(s, sums) };
        return;
    }
    for l in 0..8 {
        let mx = s[l..]
            .iter()
            .step_by(8)
            .fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let mut sum = 0f32;
        for v in s[l..].iter_mut().step_by(8) {
            *v = crate::ops::exp_poly(*v - mx);
            sum += *v;
        }
        sums[l] = sum;
    }
}

/// `ot[d][l]` += Σ_k s[k][l]·vb[k][d] for the positions k of `s` (`[np][8]`, np ≤ 8) in
/// order; `vb` is `[8][hd]`, `ot` `[hd][8]`.
#[inline(always)]
fn pv8<const AVX: bool>(s: &[f32], vb: &[f32], hd: usize, ot: &mut [f32]) {
    let np = s.len() / 8;
    assert!(np <= 8 && vb.len() >= 8 * hd && ot.len() >= 8 * hd);
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: as in `scores8`.
        unsafe { x86::pv8(s, vb, hd, ot) };
        return;
    }
    for d in 0..hd {
        for l in 0..8 {
            let mut o = ot[d * 8 + l];
            for k in 0..np {
                o = s[k * 8 + l].mul_add(vb[k * hd + d], o);
            }
            ot[d * 8 + l] = o;
        }
    }
}

/// q·k for four key rows (each as long as q): eight lanes per row and two accumulators per
/// row (even and odd chunks of eight: eight independent FMA chains in all, enough to keep
/// both FMA units busy), summed as the AVX2 twin sums its registers (even + odd, then lanes j
/// and j+4, then pairs), so that both give the same bits (an int8-quantized activation
/// downstream would amplify any difference).
#[inline(always)]
fn dot4_scalar<T: KvElem>(q: &[f32], k: [&[T]; 4]) -> [f32; 4] {
    let n = q.len();
    let mut out = [0f32; 4];
    let chunks = n / 8;
    for (r, o) in out.iter_mut().enumerate() {
        let kr = k[r];
        let mut acc = [[0f32; 8]; 2];
        for c in 0..chunks {
            let a = &mut acc[c & 1];
            for j in 0..8 {
                a[j] = q[c * 8 + j].mul_add(T::value(kr, c * 8 + j), a[j]);
            }
        }
        let l: [f32; 8] = std::array::from_fn(|j| acc[0][j] + acc[1][j]);
        let h: [f32; 4] = std::array::from_fn(|j| l[j] + l[j + 4]);
        let (a, b) = (h[0] + h[2], h[1] + h[3]);
        *o = a + b;
        for i in chunks * 8..n {
            *o += q[i] * T::value(kr, i);
        }
    }
    out
}

/// o += Σᵣ s[r]·v[r]: the same fused steps as the AVX2 twin, lane by lane.
#[inline(always)]
fn axpy4_scalar<T: KvElem>(o: &mut [f32], s: [f32; 4], v: [&[T]; 4]) {
    let n = o.len();
    let body = n / 8 * 8;
    for (i, oi) in o[..body].iter_mut().enumerate() {
        let a = s[0].mul_add(T::value(v[0], i), *oi);
        let a = s[1].mul_add(T::value(v[1], i), a);
        let a = s[2].mul_add(T::value(v[2], i), a);
        *oi = s[3].mul_add(T::value(v[3], i), a);
    }
    for i in body..n {
        o[i] += s[0] * T::value(v[0], i)
            + s[1] * T::value(v[1], i)
            + s[2] * T::value(v[2], i)
            + s[3] * T::value(v[3], i);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::KvElem;
    use crate::blocks::{f16_le, BlockQ8_0, QK};

    // Horizontal sums: (j + j+4), then pairs — the scalar twin's order.
    use crate::dot::x86::hsum;
    use crate::ops::x86::exp8;

    /// [`super::scores8`] (sizes checked by the caller).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores8(qt: &[f32], kb: &[f32], hd: usize, scale: f32, out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); 8];
        let (q, k) = (qt.as_ptr(), kb.as_ptr());
        for d in 0..hd {
            // SAFETY: d < hd; qt holds hd·8 floats, kb 8·hd.
            unsafe {
                let qd = _mm256_loadu_ps(q.add(8 * d));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qd, _mm256_set1_ps(*k.add(j * hd + d)), *a);
                }
            }
        }
        let sc = _mm256_set1_ps(scale);
        for (j, a) in acc.iter().enumerate() {
            // SAFETY: out holds 64 floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), _mm256_mul_ps(*a, sc)) };
        }
    }

    /// [`super::softmax8`] (sizes checked by the caller).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax8(s: &mut [f32], sums: &mut [f32]) {
        let n = s.len() / 8;
        let p = s.as_mut_ptr();
        let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in 0..n {
            // SAFETY: i < n rows of eight.
            mx = _mm256_max_ps(mx, unsafe { _mm256_loadu_ps(p.add(8 * i)) });
        }
        let mut sum = _mm256_setzero_ps();
        for i in 0..n {
            // SAFETY: as above.
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(8 * i)), mx));
                _mm256_storeu_ps(p.add(8 * i), e);
                sum = _mm256_add_ps(sum, e);
            }
        }
        // SAFETY: sums holds eight floats.
        unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), sum) };
    }

    /// [`super::pv8`] (sizes checked by the caller).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pv8(s: &[f32], vb: &[f32], hd: usize, ot: &mut [f32]) {
        let np = s.len() / 8;
        let (sp, v, o) = (s.as_ptr(), vb.as_ptr(), ot.as_mut_ptr());
        for d0 in (0..hd).step_by(8) {
            // SAFETY: d0 + 8 ≤ hd (hd is a multiple of 8): ot holds hd·8 floats, vb 8·hd,
            // s np·8.
            unsafe {
                let mut acc: [__m256; 8] =
                    std::array::from_fn(|j| _mm256_loadu_ps(o.add(8 * (d0 + j))));
                for k in 0..np {
                    let pk = _mm256_loadu_ps(sp.add(8 * k));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(pk, _mm256_set1_ps(*v.add(k * hd + d0 + j)), *a);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.add(8 * (d0 + j)), *a);
                }
            }
        }
    }

    /// Values i..i+8 of a row as f32 (exactly `KvElem::value`'s).
    trait Load8: KvElem {
        /// # Safety
        /// i + 8 ≤ the row's values, i a multiple of 8; the CPU must have AVX2 and F16C.
        unsafe fn load8(row: &[Self], i: usize) -> __m256;
    }

    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(row: &[f32], i: usize) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_ps(row.as_ptr().add(i)) }
        }
    }

    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(row: &[f16], i: usize) -> __m256 {
            // SAFETY: the caller's contract (8 halves are 16 bytes).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(i).cast())) }
        }
    }

    impl Load8 for BlockQ8_0 {
        #[inline(always)]
        unsafe fn load8(row: &[BlockQ8_0], i: usize) -> __m256 {
            // SAFETY: the caller's contract: block i / 32 exists and holds values i..i+8
            // (i is a multiple of 8, blocks hold 32).
            unsafe {
                let b = row.get_unchecked(i / QK);
                let q = _mm_loadl_epi64(b.qs.as_ptr().add(i % QK).cast());
                let x = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                // d · q is exact in f32 (11 × 8 significant bits), as in the scalar twin.
                _mm256_mul_ps(x, _mm256_set1_ps(f16_le(b.d)))
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot4<T: Load8>(q: &[f32], k: [&[T]; 4]) -> [f32; 4] {
        let n = q.len();
        assert!(k.iter().all(|r| r.len() * T::PER >= n));
        // Two accumulators per row (even and odd chunks): eight independent chains.
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let chunks = n / 8;
        // Even chunks into acc[r][0], odd into acc[r][1], two at a time: with the index
        // `c & 1` computed at run time the accumulators lived on the stack (a load and a store
        // around every FMA; 17 % of a 512-token prompt was attention).
        let mut c = 0;
        while c < chunks {
            let two = c + 1 < chunks;
            // SAFETY: c·8 + 8 ≤ n ≤ every row's values (asserted), likewise c + 1 when `two`;
            // features enabled here.
            unsafe {
                let q0 = _mm256_loadu_ps(q.as_ptr().add(c * 8));
                for r in 0..4 {
                    acc[r][0] = _mm256_fmadd_ps(q0, T::load8(k[r], c * 8), acc[r][0]);
                }
                if two {
                    let q1 = _mm256_loadu_ps(q.as_ptr().add(c * 8 + 8));
                    for r in 0..4 {
                        acc[r][1] = _mm256_fmadd_ps(q1, T::load8(k[r], c * 8 + 8), acc[r][1]);
                    }
                }
            }
            c += 2;
        }
        let mut out = [0f32; 4];
        for r in 0..4 {
            out[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
            for i in chunks * 8..n {
                out[r] += q[i] * T::value(k[r], i);
            }
        }
        out
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn axpy4<T: Load8>(o: &mut [f32], s: [f32; 4], v: [&[T]; 4]) {
        let n = o.len();
        assert!(v.iter().all(|r| r.len() * T::PER >= n));
        let sv = s.map(|x| _mm256_set1_ps(x));
        let chunks = n / 8;
        for c in 0..chunks {
            // SAFETY: c·8 + 8 ≤ n ≤ every row's values (asserted); features enabled here.
            unsafe {
                let p = o.as_mut_ptr().add(c * 8);
                let mut acc = _mm256_loadu_ps(p);
                for r in 0..4 {
                    acc = _mm256_fmadd_ps(sv[r], T::load8(v[r], c * 8), acc);
                }
                _mm256_storeu_ps(p, acc);
            }
        }
        for i in chunks * 8..n {
            o[i] += s[0] * T::value(v[0], i)
                + s[1] * T::value(v[1], i)
                + s[2] * T::value(v[2], i)
                + s[3] * T::value(v[3], i);
        }
    }

    /// The entry points for each element type.
    macro_rules! entry {
        ($dot:ident, $axpy:ident, $t:ty) => {
            /// # Safety
            /// The CPU must have AVX2, FMA and F16C.
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) unsafe fn $dot(q: &[f32], k: [&[$t]; 4]) -> [f32; 4] {
                dot4(q, k)
            }
            /// # Safety
            /// The CPU must have AVX2, FMA and F16C.
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) unsafe fn $axpy(o: &mut [f32], s: [f32; 4], v: [&[$t]; 4]) {
                axpy4(o, s, v)
            }
        };
    }

    entry!(dot4_f32, axpy4_f32, f32);
    entry!(dot4_f16, axpy4_f16, f16);
    entry!(dot4_q8_0, axpy4_q8_0, BlockQ8_0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::detect;

    fn rnd(seed: &mut u64) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }

    /// The rows `keys`/`values` (`[len, n_kv, hd]`) in a paged layout of element T: blocks of
    /// 4 positions, in a scrambled order.
    fn paged<T: KvElem>(
        keys: &[f32],
        values: &[f32],
        len: usize,
        n_kv: usize,
        hd: usize,
    ) -> (Vec<T>, Vec<T>, Vec<u32>) {
        let nb = len.div_ceil(4);
        let row = hd / T::PER;
        let table: Vec<u32> = (0..nb as u32).map(|b| (b * 7) % nb as u32).collect();
        // SAFETY (of the zeroed elements): KvElem types are plain data.
        let zero: T = unsafe { std::mem::zeroed() };
        let mut pk = vec![zero; nb * n_kv * 4 * row];
        let mut pv = pk.clone();
        for p in 0..len {
            for h in 0..n_kv {
                let o = ((table[p / 4] as usize * n_kv + h) * 4 + p % 4) * row;
                let src = (p * n_kv + h) * hd;
                T::store_row(&keys[src..src + hd], &mut pk[o..o + row]);
                T::store_row(&values[src..src + hd], &mut pv[o..o + row]);
            }
        }
        (pk, pv, table)
    }

    /// Attention over the rows of `keys`/`values` stored as T in a scrambled paged layout,
    /// with the scalar kernel and the fastest one: (scalar, fastest).
    #[allow(clippy::too_many_arguments)]
    fn run_paged<T: KvElem>(
        keys: &[f32],
        values: &[f32],
        q: &[f32],
        (n_kv, hd, len): (usize, usize, usize),
        head: usize,
        start: usize,
        cap: f32,
    ) -> [Vec<f32>; 2] {
        let (k, v, table) = paged::<T>(keys, values, len, n_kv, hd);
        let rows = Paged {
            keys: &k[..],
            values: &v[..],
            table: &table,
            block_shift: 2,
            n_kv_head: n_kv,
            row: hd / T::PER,
        };
        let group = q.len() / hd;
        [Isa::Scalar, detect()].map(|isa| {
            let mut sc = vec![0f32; group * len];
            let mut out = vec![0f32; group * hd];
            attend_group(
                isa, q, &rows, head, hd, start, len, 0.125, cap, &mut sc, &mut out,
            );
            out
        })
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    /// The fastest kernel gives the scalar twin's bits (same fused steps, same reduction
    /// order, exact conversions) for F32, F16 and Q8_0 rows, with and without a window and
    /// a cap; paged F32 rows give what segmented ones give; F16 and Q8_0 storage cost about
    /// their precision, no more.
    #[test]
    fn simd_equals_scalar_bitwise_and_layouts_agree() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for hd in [72, 64] {
            let (n_kv, group, len) = (3, 2, 45);
            let keys: Vec<f32> = (0..len * n_kv * hd).map(|_| rnd(&mut seed)).collect();
            let values: Vec<f32> = (0..len * n_kv * hd).map(|_| rnd(&mut seed)).collect();
            let q: Vec<f32> = (0..group * hd).map(|_| rnd(&mut seed)).collect();
            let split = 10 * n_kv * hd;
            let seg = Segmented {
                keys: [&keys[..split], &keys[split..]],
                values: [&values[..split], &values[split..]],
                split: 10,
                stride: n_kv * hd,
                hd,
            };
            let shape = (n_kv, hd, len);
            for (start, cap) in [(0, 0.0), (13, 0.0), (0, 5.0), (43, 0.0)] {
                for head in 0..n_kv {
                    let mut sc = vec![0f32; group * len];
                    let mut want = vec![0f32; group * hd];
                    attend_group(
                        detect(),
                        &q,
                        &seg,
                        head,
                        hd,
                        start,
                        len,
                        0.125,
                        cap,
                        &mut sc,
                        &mut want,
                    );
                    let [a, b] = run_paged::<f32>(&keys, &values, &q, shape, head, start, cap);
                    assert_eq!(a, b, "F32: scalar and {:?} differ", detect());
                    assert_eq!(a, want, "segmented and paged rows differ");
                    let [a, b] = run_paged::<f16>(&keys, &values, &q, shape, head, start, cap);
                    assert_eq!(a, b, "F16: scalar and {:?} differ", detect());
                    assert!(max_diff(&a, &want) < 2e-3, "F16 vs F32 rows");
                    if hd % QK == 0 {
                        let [a, b] =
                            run_paged::<BlockQ8_0>(&keys, &values, &q, shape, head, start, cap);
                        assert_eq!(a, b, "Q8_0: scalar and {:?} differ", detect());
                        assert!(max_diff(&a, &want) < 1e-2, "Q8_0 vs F32 rows");
                    }
                }
            }
        }
    }

    /// A tile of tokens: the scalar twin and the fastest kernel give the same bits, and each
    /// token gets what `attend_group` gives it alone to rounding (F32/F16/Q8_0 rows; tiles
    /// whose lanes fill several eight-lane packs, part of one, or span the causal edge).
    #[test]
    fn tile_matches_token_by_token() {
        let mut seed = 0xfeed_beefu64;
        let (n_kv, hd, len) = (2, 64, 30);
        let keys: Vec<f32> = (0..len * n_kv * hd).map(|_| rnd(&mut seed)).collect();
        let values: Vec<f32> = (0..len * n_kv * hd).map(|_| rnd(&mut seed)).collect();
        #[allow(clippy::too_many_arguments)]
        fn check<T: KvElem>(
            keys: &[f32],
            values: &[f32],
            seed: &mut u64,
            n_kv: usize,
            hd: usize,
            len: usize,
        ) {
            let (k, v, table) = paged::<T>(keys, values, len, n_kv, hd);
            let rows = Paged {
                keys: &k[..],
                values: &v[..],
                table: &table,
                block_shift: 2,
                n_kv_head: n_kv,
                row: hd / T::PER,
            };
            for (group, len0, nt) in [(3, 1, 4), (8, 9, 5), (1, 17, 8), (2, 20, 1), (5, 3, 7)] {
                let qs: Vec<Vec<f32>> = (0..nt)
                    .map(|_| (0..group * hd).map(|_| rnd(seed) * 3.0).collect())
                    .collect();
                let qr: Vec<&[f32]> = qs.iter().map(|q| &q[..]).collect();
                for head in 0..n_kv {
                    let [a, b] = [Isa::Scalar, detect()].map(|isa| {
                        let mut sc = vec![f32::NAN; attend_tile_scratch(nt, group, hd, len0)];
                        let mut outs = vec![vec![f32::NAN; group * hd]; nt];
                        let mut or: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
                        assert!(attend_tile(
                            isa, &qr, &rows, head, hd, len0, 0.125, &mut sc, &mut or
                        ));
                        outs
                    });
                    assert_eq!(a, b, "scalar and {:?} differ", detect());
                    for (i, q) in qs.iter().enumerate() {
                        let mut sc1 = vec![0f32; group * len];
                        let mut want = vec![0f32; group * hd];
                        attend_group(
                            Isa::Scalar,
                            q,
                            &rows,
                            head,
                            hd,
                            0,
                            len0 + i,
                            0.125,
                            0.0,
                            &mut sc1,
                            &mut want,
                        );
                        let d = max_diff(&a[i], &want);
                        assert!(
                            d < 2e-6,
                            "group {group} len0 {len0} token {i} head {head}: {d}"
                        );
                    }
                }
            }
        }
        check::<f32>(&keys, &values, &mut seed, n_kv, hd, len);
        check::<f16>(&keys, &values, &mut seed, n_kv, hd, len);
        check::<BlockQ8_0>(&keys, &values, &mut seed, n_kv, hd, len);
        // Unsupported shapes and short scratch are refused, nothing written.
        let q = vec![0f32; 12];
        let mut o = vec![1f32; 12];
        let rows = Segmented {
            keys: [&[], &keys],
            values: [&[], &values],
            split: 0,
            stride: n_kv * hd,
            hd: 12,
        };
        let mut sc = vec![0f32; 1 << 12];
        assert!(!attend_tile(
            detect(),
            &[&q],
            &rows,
            0,
            12,
            3,
            1.0,
            &mut sc,
            &mut [&mut o]
        ));
        assert!(o.iter().all(|&v| v == 1.0));
    }

    /// Against a direct f64 computation of softmax(q·K·scale)·V.
    #[test]
    fn matches_a_reference() {
        let mut seed = 42u64;
        let (hd, len) = (16, 9);
        let keys: Vec<f32> = (0..len * hd).map(|_| rnd(&mut seed)).collect();
        let values: Vec<f32> = (0..len * hd).map(|_| rnd(&mut seed)).collect();
        let q: Vec<f32> = (0..hd).map(|_| rnd(&mut seed) * 4.0).collect();
        let seg = Segmented {
            keys: [&[], &keys],
            values: [&[], &values],
            split: 0,
            stride: hd,
            hd,
        };
        let s: Vec<f64> = (0..len)
            .map(|p| {
                (0..hd)
                    .map(|i| q[i] as f64 * keys[p * hd + i] as f64)
                    .sum::<f64>()
                    * 0.5
            })
            .collect();
        let mx = s.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
        let z: f64 = e.iter().sum();
        for isa in [Isa::Scalar, detect()] {
            let mut sc = vec![0f32; len];
            let mut out = vec![0f32; hd];
            attend_group(isa, &q, &seg, 0, hd, 0, len, 0.5, 0.0, &mut sc, &mut out);
            for i in 0..hd {
                let want: f64 = (0..len).map(|p| e[p] / z * values[p * hd + i] as f64).sum();
                assert!((out[i] as f64 - want).abs() < 1e-5, "{isa:?} dim {i}");
            }
        }
    }
}
