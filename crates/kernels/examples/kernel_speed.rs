//! Kernel throughput with the weights in L2 (bytes of weights per second, best of 7 runs):
//! the compute cost of each kernel, apart from memory.
//! cargo run --release -p tuili-kernels --example kernel_speed
use std::time::Instant;
use tuili_core::DType;
use tuili_kernels::act::{ActKind, ActRef};
use tuili_kernels::act::{Q8KRow, Q8Row};
use tuili_kernels::cpu::Isa;
use tuili_kernels::dot::dot_rows;
use tuili_kernels::types::act_kind;

fn main() {
    let cols: usize = std::env::var("TUILI_COLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    // TUILI_ROWS=32768 streams the weights from memory instead of L2.
    let rows: usize = std::env::var("TUILI_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    for dtype in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::F16,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_0_48,
        DType::Q4_0_48,
        DType::Q8_0_24,
        DType::Q4_0_24,
        DType::Q8_0_U40,
        DType::Q8_0_U64,
    ] {
        // TUILI_TYPES=Q4_0,F16 picks some.
        if let Ok(only) = std::env::var("TUILI_TYPES") {
            if !only.split(',').any(|t| t == dtype.to_string()) {
                continue;
            }
        }
        let rb = dtype.bytes_for(cols as u64).unwrap() as usize;
        let mut owned = vec![0u8; rows * rb];
        for (i, b) in owned.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8 & 0x3B;
        }
        if dtype.pool_room().is_some() {
            // Unstructured rows must keep no more than their room: quantized from floats
            // (the quantizer keeps the largest that fit).
            let x: Vec<f32> = (0..cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            for row in owned.chunks_exact_mut(rb) {
                tuili_kernels::types::quantize_row(dtype, &x, row).unwrap();
            }
        }
        // TUILI_MAP=file: the weights are the file's bytes through a memory map (as a model's
        // are), from a 64 KiB offset. Any bytes are valid F16 weights; for the block types
        // the results are meaningless (some scales are NaN), but the speed is not.
        let map = std::env::var("TUILI_MAP").ok().map(|f| {
            let file = std::fs::File::open(f).expect("open TUILI_MAP");
            // SAFETY: a read-only benchmark over a file nobody writes meanwhile.
            unsafe { memmap2::Mmap::map(&file) }.expect("map")
        });
        let w: &[u8] = match &map {
            Some(m) => &m[65536..65536 + rows * rb],
            _ => &owned,
        };
        let xs: Vec<Vec<f32>> = (0..4)
            .map(|t| (0..cols).map(|i| ((i + t) as f32 * 0.37).sin()).collect())
            .collect();
        let q8: Vec<Q8Row> = xs.iter().map(|x| Q8Row::from_f32(x)).collect();
        let q8k: Vec<Q8KRow> = xs.iter().map(|x| Q8KRow::from_f32(x)).collect();
        let h: Vec<Vec<half::f16>> = xs
            .iter()
            .map(|x| x.iter().map(|&v| half::f16::from_f32(v)).collect())
            .collect();
        let acts: Vec<ActRef> = (0..4)
            .map(|t| match act_kind(dtype) {
                ActKind::F32 => ActRef::F32(&xs[t]),
                ActKind::F16 => ActRef::F16(&h[t]),
                ActKind::Q8 => ActRef::Q8(&q8[t]),
                ActKind::Q8K => ActRef::Q8K(&q8k[t]),
            })
            .collect();
        let mut tmp = vec![0f32; cols];
        let mut out = vec![0f32; rows * 4];
        let reps = (200 * 128 / rows).max(2);
        for isa in Isa::available().into_iter().skip(1) {
            for nt in [1usize, 4] {
                let mut best = f64::MAX;
                for _ in 0..7 {
                    let t = Instant::now();
                    for _ in 0..reps {
                        dot_rows(
                            isa,
                            dtype,
                            w,
                            rb,
                            &acts[..nt],
                            &mut out[..rows * nt],
                            &mut tmp,
                        );
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                    std::hint::black_box(&out);
                }
                let gbs = (rows * rb * reps) as f64 / best / 1e9;
                println!("{dtype:5} {:12} tokens {nt}: {gbs:6.2} GB/s of weights, {:6.2} G weight·token/s", isa.name(), (rows * cols * reps * nt) as f64 / best / 1e9);
            }
        }
    }
}
