//! Token-lane matrix kernel throughput (`gemm::gemm_rows`), weights and activations in cache:
//! multiply-adds per second for a tile of `TUILI_TOKENS` (256) tokens and `TUILI_COLS` (2048)
//! columns, best of 7 runs — the compute ceiling of prompt processing, apart from memory.
//! cargo run --release -p tuili-kernels --example gemm_speed
use std::time::Instant;
use tuili_core::DType;
use tuili_kernels::act::ActKind;
use tuili_kernels::act::{Q8KRow, Q8Row};
use tuili_kernels::cpu::Isa;
use tuili_kernels::gemm::{gemm_rows, Q8Tiles};
use tuili_kernels::types::{act_kind, has_gemm};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let cols = env("TUILI_COLS", 2048);
    let tokens = env("TUILI_TOKENS", 256);
    let rows = 16;
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
    ] {
        let rb = dtype.bytes_for(cols as u64).unwrap() as usize;
        let mut w = vec![0u8; rows * rb];
        for (i, b) in w.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8 & 0x3B;
        }
        let xs: Vec<Vec<f32>> = (0..tokens)
            .map(|t| (0..cols).map(|i| ((i + t) as f32 * 0.37).sin()).collect())
            .collect();
        // K-quants take activations quantized per super-block (as the model gives them).
        let mut tiles = Q8Tiles::default();
        if act_kind(dtype) == ActKind::Q8K {
            let q8k: Vec<Q8KRow> = xs.iter().map(|x| Q8KRow::from_f32(x)).collect();
            tiles.build_k(&q8k, cols / 32);
        } else {
            let q8: Vec<Q8Row> = xs.iter().map(|x| Q8Row::from_f32(x)).collect();
            tiles.build(&q8, cols / 32);
        }
        let width = tiles.n_groups * 8;
        let mut out = vec![0f32; rows * width];
        let mut bytes = vec![0u8; 4 * cols];
        let mut scales = vec![0f32; 16 * cols / 32];
        for isa in Isa::available() {
            if !has_gemm(isa, dtype) {
                continue;
            }
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = Instant::now();
                for _ in 0..4 {
                    gemm_rows(
                        isa,
                        dtype,
                        &w,
                        rb,
                        &tiles,
                        &mut out,
                        &mut bytes,
                        &mut scales,
                    );
                }
                best = best.min(t.elapsed().as_secs_f64() / 4.0);
            }
            let macs = (rows * cols * tokens) as f64;
            println!(
                "{dtype} {:<12} {:7.1} G multiply-adds/s",
                isa.name(),
                macs / best / 1e9
            );
        }
    }
}
