//! Every SIMD dot-product kernel against its scalar twin, and the quantized dot products
//! against the exact f32 dot product (ggml's test-quantize-fns bound on the dot error).

use half::f16;
use tuili_core::DType;
use tuili_kernels::act::{to_f16_scalar, Q8KRow, Q8Row};
use tuili_kernels::act::{ActKind, ActRef};
use tuili_kernels::cpu::Isa;
use tuili_kernels::dot::{dot_many, dot_rows};
use tuili_kernels::ops;
use tuili_kernels::types::act_kind;
use tuili_kernels::types::dequantize_row;

struct Lcg(u64);
impl Lcg {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn byte(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 56) as u8
    }
}

/// Random weights of `n` elements in `dtype`: quantized from floats where tuili can quantize,
/// random blocks with sane scales for K-quants.
fn weights(dtype: DType, n: usize, rng: &mut Lcg) -> Vec<u8> {
    let bytes = dtype.bytes_for(n as u64).unwrap() as usize;
    let mut out = vec![0u8; bytes];
    if tuili_kernels::types::quantize_row(
        dtype,
        &(0..n).map(|_| rng.f()).collect::<Vec<_>>(),
        &mut out,
    )
    .is_ok()
    {
        return out;
    }
    for b in out.iter_mut() {
        *b = rng.byte();
    }
    let fields: &[usize] = match dtype {
        DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        _ => &[],
    };
    let bb = dtype.block_bytes() as usize;
    for blk in out.chunks_exact_mut(bb) {
        for &o in fields {
            blk[o..o + 2].copy_from_slice(
                &half::f16::from_f32(0.01 + 0.01 * rng.f().abs())
                    .to_bits()
                    .to_le_bytes(),
            );
        }
    }
    out
}

/// Each activation row in every prepared form: quantized both ways (blocks of 32, super-blocks
/// of 256) and as f16.
fn quantized(xs: &[Vec<f32>]) -> (Vec<Q8Row>, Vec<Q8KRow>, Vec<Vec<f16>>) {
    let q8 = xs.iter().map(|x| Q8Row::from_f32(x)).collect();
    let q8k = xs.iter().map(|x| Q8KRow::from_f32(x)).collect();
    let h = xs
        .iter()
        .map(|x| {
            let mut h = vec![f16::ZERO; x.len()];
            to_f16_scalar(x, &mut h);
            h
        })
        .collect();
    (q8, q8k, h)
}

/// The activation rows in the form `dtype`'s kernels take.
fn act_refs<'a>(
    dtype: DType,
    xs: &'a [Vec<f32>],
    q8: &'a [Q8Row],
    q8k: &'a [Q8KRow],
    h: &'a [Vec<f16>],
) -> Vec<ActRef<'a>> {
    (0..xs.len())
        .map(|i| match act_kind(dtype) {
            ActKind::F32 => ActRef::F32(&xs[i]),
            ActKind::F16 => ActRef::F16(&h[i]),
            ActKind::Q8 => ActRef::Q8(&q8[i]),
            ActKind::Q8K => ActRef::Q8K(&q8k[i]),
        })
        .collect()
}

/// Every type tuili computes with, but Q8_K (an activation type, never a weight in GGUF files).
fn types() -> impl Iterator<Item = DType> {
    tuili_kernels::types::runnable().filter(|t| *t != DType::Q8_K)
}

#[test]
fn simd_kernels_match_scalar_twins_and_exact_dots() {
    let mut rng = Lcg(99);
    for &n in &[256usize, 1024, 4096 + 256] {
        for dtype in types() {
            let w = weights(dtype, n, &mut rng);
            let xs: Vec<Vec<f32>> = (0..5).map(|_| (0..n).map(|_| rng.f()).collect()).collect();
            let (q8, q8k, h) = quantized(&xs);
            let acts = act_refs(dtype, &xs, &q8, &q8k, &h);
            let mut tmp = vec![0f32; n];
            let mut reference = vec![0f32; 5];
            dot_many(Isa::Scalar, dtype, &w, &acts, &mut reference, &mut tmp);
            // Exact: dequantized weights · f32 activations.
            let mut wf = vec![0f32; n];
            dequantize_row(dtype, &w, &mut wf).unwrap();
            for (i, x) in xs.iter().enumerate() {
                let exact = ops::dot(&wf, x);
                // (Σ|w|/√n is ≈ 0.87·‖w‖ for dense weights; a row keeping few, the
                // unstructured layouts', needs the norm itself.)
                let norm = wf.iter().map(|v| v * v).sum::<f32>().sqrt();
                let scale = (wf.iter().map(|v| v.abs()).sum::<f32>() / n as f32
                    * (n as f32).sqrt())
                .max(0.87 * norm);
                let err = (reference[i] - exact).abs() / scale.max(1e-6);
                assert!(
                    err < 0.02,
                    "{dtype} n={n}: quantized-activation dot off by {err} (relative)"
                );
            }
            for isa in Isa::available() {
                // One row at a time and several at once must both match the scalar twin.
                for batch in [1usize, 3, 5] {
                    let mut got = [0f32; 5];
                    for start in (0..5).step_by(batch) {
                        let end = (start + batch).min(5);
                        dot_many(
                            isa,
                            dtype,
                            &w,
                            &acts[start..end],
                            &mut got[start..end],
                            &mut tmp,
                        );
                    }
                    for i in 0..5 {
                        let tol = 1e-5 * reference[i].abs().max(1.0) + 1e-4;
                        assert!(
                            (got[i] - reference[i]).abs() <= tol,
                            "{dtype} n={n} {} batch {batch}: {} vs scalar {}",
                            isa.name(),
                            got[i],
                            reference[i]
                        );
                    }
                }
            }
        }
    }
    eprintln!("ISAs tested: {:?}", Isa::available());
}

/// Groups of rows (the decode path: one call per group, multi-row kernels such as Q4_0's
/// eight-row one, with leftover rows) against the scalar twin row by row, for one to five
/// tokens. 19 rows = two groups of eight and three left over.
#[test]
fn row_groups_match_scalar_twins() {
    let mut rng = Lcg(7);
    // 640: 20 blocks of 32, the one-row kernels' groups of eight and a tail of four (for the
    // types whose blocks divide it).
    for &n in &[256usize, 640, 2048 + 256] {
        for dtype in types().filter(|t| (n as u64).is_multiple_of(t.block_len())) {
            let rows = 19;
            let w: Vec<u8> = (0..rows)
                .flat_map(|_| weights(dtype, n, &mut rng))
                .collect();
            let rb = w.len() / rows;
            let xs: Vec<Vec<f32>> = (0..5).map(|_| (0..n).map(|_| rng.f()).collect()).collect();
            let (q8, q8k, h) = quantized(&xs);
            let acts = act_refs(dtype, &xs, &q8, &q8k, &h);
            let mut tmp = vec![0f32; n];
            for nt in 1..=5 {
                let mut reference = vec![0f32; rows * nt];
                for r in 0..rows {
                    dot_many(
                        Isa::Scalar,
                        dtype,
                        &w[r * rb..(r + 1) * rb],
                        &acts[..nt],
                        &mut reference[r * nt..(r + 1) * nt],
                        &mut tmp,
                    );
                }
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; rows * nt];
                    dot_rows(isa, dtype, &w, rb, &acts[..nt], &mut got, &mut tmp);
                    for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
                        let tol = 1e-5 * r.abs().max(1.0) + 1e-4;
                        assert!(
                            (g - r).abs() <= tol,
                            "{dtype} n={n} {} {nt} tokens, row {} token {}: {g} vs scalar {r}",
                            isa.name(),
                            i / nt,
                            i % nt
                        );
                    }
                }
            }
        }
    }
}

/// The token-lane matrix kernels against their scalar twin and against the dot kernels.
#[test]
fn gemm_rows_match_scalar_and_dot() {
    use tuili_kernels::gemm::{gemm_rows, gemm_rows_scalar, Q8Tiles, GROUP};
    use tuili_kernels::types::has_gemm;
    let mut rng = Lcg(5);
    let cols = 512;
    for dtype in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q8_0_48,
        DType::Q4_0_48,
        DType::Q8_0_24,
        DType::Q4_0_24,
        DType::Q8_0_U40,
        DType::Q8_0_U120,
    ] {
        let rb = dtype.bytes_for(cols as u64).unwrap() as usize;
        let rows: usize = 6;
        let mut w = Vec::new();
        for _ in 0..rows {
            w.extend(weights(dtype, cols, &mut rng));
        }
        // 13 and 21 tokens: two and three groups of eight (groups go in pairs on AVX-512).
        for n_tok in [1usize, 7, 8, 13, 21] {
            let xs: Vec<Vec<f32>> = (0..n_tok)
                .map(|_| (0..cols).map(|_| rng.f()).collect())
                .collect();
            let (q8, q8k, _) = quantized(&xs);
            // Tiles of Q8_0 rows, and of Q8_K rows (a scale per super-block: the K-quant
            // kernels apply it once per super-block; the others per block, as it repeats).
            for k_tiles in [false, true] {
                let mut tiles = Q8Tiles::default();
                if k_tiles {
                    tiles.build_k(&q8k, cols / 32);
                } else {
                    tiles.build(&q8, cols / 32);
                }
                // The activations that the tiles hold, dequantized.
                let act = |t: usize, i: usize| {
                    if k_tiles {
                        q8k[t].d[i / 256] * q8k[t].qs[i] as f32
                    } else {
                        q8[t].d[i / 32] * q8[t].qs[i] as f32
                    }
                };
                let width = tiles.n_groups * GROUP;
                let mut bytes = vec![0u8; 4 * cols];
                let mut scales = vec![0f32; 16 * cols / 32];
                let mut want = vec![0f32; rows.next_multiple_of(4) * width];
                gemm_rows_scalar(dtype, &w, rb, &tiles, &mut want, &mut bytes, &mut scales);
                // The scalar twin equals the exact product of the dequantized weights and the
                // dequantized int8 activations it was given.
                let mut wf = vec![0f32; cols];
                for r in 0..rows {
                    dequantize_row(dtype, &w[r * rb..(r + 1) * rb], &mut wf).unwrap();
                    for t in 0..n_tok {
                        let a: Vec<f32> = (0..cols).map(|i| act(t, i)).collect();
                        let exact = ops::dot(&wf, &a);
                        let g = want[r * width + t];
                        assert!(
                            (g - exact).abs() <= 1e-4 * exact.abs().max(1.0),
                            "{dtype} k_tiles {k_tiles} r{r} t{t}: {g} vs {exact}"
                        );
                    }
                }
                for isa in Isa::available() {
                    if !has_gemm(isa, dtype) {
                        continue;
                    }
                    let mut got = vec![0f32; rows.next_multiple_of(4) * width];
                    assert!(gemm_rows(
                        isa,
                        dtype,
                        &w,
                        rb,
                        &tiles,
                        &mut got,
                        &mut bytes,
                        &mut scales
                    ));
                    for i in 0..rows * width {
                        assert!(
                            (got[i] - want[i]).abs() <= 1e-4 * want[i].abs().max(1.0),
                            "{dtype} k_tiles {k_tiles} {} {i}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

/// The float token-lane kernels against their scalar twin and the exact product.
#[test]
fn gemm_rows_f_match_scalar() {
    use tuili_kernels::gemm::{gemm_rows_f, gemm_rows_f_scalar, F32Tiles, GROUP};
    use tuili_kernels::types::has_gemm_f;
    let mut rng = Lcg(11);
    for cols in [64usize, 333] {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let rb = dtype.bytes_for(cols as u64).unwrap() as usize;
            let rows = 7;
            let mut w = Vec::new();
            for _ in 0..rows {
                w.extend(weights(dtype, cols, &mut rng));
            }
            for n_tok in [1usize, 8, 11] {
                let x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f()).collect();
                let mut tiles = F32Tiles::default();
                tiles.build(&x, n_tok, cols);
                let width = tiles.n_groups * GROUP;
                let mut want = vec![0f32; rows * width];
                let mut row = vec![0f32; cols];
                gemm_rows_f_scalar(dtype, &w, rb, &tiles, &mut want, &mut row);
                for r in 0..rows {
                    tuili_kernels::types::dequantize_row(dtype, &w[r * rb..(r + 1) * rb], &mut row)
                        .unwrap();
                    for t in 0..n_tok {
                        let exact = ops::dot(&row, &x[t * cols..(t + 1) * cols]);
                        assert!((want[r * width + t] - exact).abs() <= 1e-4 * exact.abs().max(1.0));
                    }
                }
                for isa in Isa::available() {
                    if !has_gemm_f(isa, dtype) {
                        continue;
                    }
                    let mut got = vec![0f32; rows.next_multiple_of(4) * width];
                    let mut scratch = vec![0f32; 4 * cols];
                    assert!(gemm_rows_f(
                        isa,
                        dtype,
                        &w,
                        rb,
                        &tiles,
                        &mut got,
                        &mut scratch
                    ));
                    for i in 0..rows * width {
                        assert!(
                            (got[i] - want[i]).abs() <= 1e-4 * want[i].abs().max(1.0),
                            "{dtype} {} {i}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

/// `rows` rows of `dtype` (`w`) against one activation on every ISA, each row against the
/// scalar twin's dot product of that row.
fn one_token_rows_match_scalar(dtype: DType, w: &[u8], rows: usize, a: ActRef<'_>, what: &str) {
    let rb = w.len() / rows;
    let mut tmp = vec![0f32; 8192];
    let mut reference = vec![0f32; rows];
    for r in 0..rows {
        let row = &w[r * rb..(r + 1) * rb];
        dot_many(
            Isa::Scalar,
            dtype,
            row,
            &[a],
            &mut reference[r..r + 1],
            &mut tmp,
        );
    }
    for isa in Isa::available() {
        let mut got = vec![f32::NAN; rows];
        dot_rows(isa, dtype, w, rb, &[a], &mut got, &mut tmp);
        for (r, (g, want)) in got.iter().zip(&reference).enumerate() {
            let tol = 1e-5 * want.abs().max(1.0) + 1e-4;
            assert!(
                (g - want).abs() <= tol,
                "{dtype} {what}, {}: row {r} {g} vs scalar {want}",
                isa.name()
            );
        }
    }
}

/// One token against Q4_0 rows whose block count is not a multiple of eight (the one-row
/// VBMI kernel's leftover blocks), regrouped and not: a row quantized again without
/// `regroup` must not be read through the old regrouping (it falls back to the other
/// kernels), and both must match the scalar twin.
#[test]
fn q4_0_one_token_rows_with_leftover_blocks() {
    let mut rng = Lcg(11);
    for blocks in [1usize, 3, 8, 9, 15, 64 + 7] {
        let n = 32 * blocks;
        let rows = 11;
        let w: Vec<u8> = (0..rows)
            .flat_map(|_| weights(DType::Q4_0, n, &mut rng))
            .collect();
        let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
        let mut q = Q8Row::from_f32(&x);
        let what = |s: &str| format!("{blocks} blocks, {s}");
        one_token_rows_match_scalar(DType::Q4_0, &w, rows, ActRef::Q8(&q), &what("regrouped"));
        // Another activation, quantized without regrouping: `qp` must be dropped.
        let y: Vec<f32> = x.iter().map(|v| -0.5 * v).collect();
        q.quantize_isa(Isa::available().into_iter().last().unwrap(), &y);
        assert!(q.qp.is_empty());
        one_token_rows_match_scalar(
            DType::Q4_0,
            &w,
            rows,
            ActRef::Q8(&q),
            &what("not regrouped"),
        );
        q.regroup();
        one_token_rows_match_scalar(
            DType::Q4_0,
            &w,
            rows,
            ActRef::Q8(&q),
            &what("regrouped again"),
        );
    }
}

/// The same for Q4_K's one-row kernel: a Q8_K activation quantized again without `regroup`
/// drops its regrouped quants and sub-block sums, and every path matches the scalar twin.
#[test]
fn q4_k_one_token_rows_regrouped_or_not() {
    let mut rng = Lcg(12);
    let (n, rows) = (3 * 256, 9);
    let w: Vec<u8> = (0..rows)
        .flat_map(|_| weights(DType::Q4_K, n, &mut rng))
        .collect();
    let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
    let mut q = Q8KRow::from_f32(&x);
    one_token_rows_match_scalar(DType::Q4_K, &w, rows, ActRef::Q8K(&q), "regrouped");
    let y: Vec<f32> = x.iter().map(|v| 0.25 - v).collect();
    q.quantize_isa(Isa::available().into_iter().last().unwrap(), &y);
    assert!(q.qp.is_empty() && q.ssum.is_empty());
    one_token_rows_match_scalar(DType::Q4_K, &w, rows, ActRef::Q8K(&q), "not regrouped");
    q.regroup();
    one_token_rows_match_scalar(DType::Q4_K, &w, rows, ActRef::Q8K(&q), "regrouped again");
}
