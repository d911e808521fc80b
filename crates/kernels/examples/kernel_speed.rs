//! Kernel throughput on weights in cache vs streamed from memory (bytes of weights per second).
//! cargo run --release -p tuili-kernels --example kernel_speed
use std::time::Instant;
use tuili_core::DType;
use tuili_kernels::act::Q8Row;
use tuili_kernels::cpu::{self, Isa};
use tuili_kernels::dot::{dot_many, ActRef};

fn main() {
    let cols: usize = std::env::var("COLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    for dtype in [DType::Q4_0, DType::Q8_0] {
        let rb = dtype.bytes_for(cols as u64).unwrap() as usize;
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut q = Q8Row::default();
        q.quantize(&x);
        let mut tmp = vec![0f32; cols];
        for (label, rows) in [
            ("in L2", 256 * 2048 / cols),
            ("streamed", 262_144 * 2048 / cols),
        ] {
            let mut w = vec![0u8; rows * rb];
            for (i, b) in w.iter_mut().enumerate() {
                *b = (i * 7 % 251) as u8 & 0x3F;
            }
            for isa in [Isa::Avx2, cpu::detect()] {
                let reps = if rows == 256 { 2000 } else { 3 };
                let t = Instant::now();
                let mut s = 0f32;
                for _ in 0..reps {
                    for r in 0..rows {
                        let mut o = [0f32; 1];
                        dot_many(
                            isa,
                            dtype,
                            &w[r * rb..(r + 1) * rb],
                            &[ActRef::Q8(&q)],
                            &mut o,
                            &mut tmp,
                        );
                        s += o[0];
                    }
                }
                let secs = t.elapsed().as_secs_f64();
                println!(
                    "{dtype} {label:9} {:12}: {:6.2} GB/s of weights ({s:.1})",
                    isa.name(),
                    (rows * rb * reps) as f64 / secs / 1e9
                );
            }
        }
    }
}
