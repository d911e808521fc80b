//! tuili's quantizers against llama.cpp's (`ggml_quantize_chunk` without an importance matrix,
//! `scripts/golden-quant.py`) on the same input bits: byte-identical output for every type.

use tuili_core::DType;
use tuili_kernels::types::dequantize_row;
use tuili_kernels::types::quantize_row;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of scripts/golden-quant.py (every value exact in f32).
fn data(rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let v = match r {
                3 => 0.0,
                5 => 0.25,
                _ => {
                    let z = splitmix((r * cols + c) as u64);
                    let mut v = ((z >> 40) as f64 / (1u64 << 24) as f64 - 0.5)
                        * 4.0
                        * 2f64.powi(r as i32 % 5 - 2);
                    if z & 0xFF == 0 {
                        v *= 8.0;
                    }
                    v
                }
            };
            out.push(v as f32);
        }
    }
    out
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn quantizers_are_byte_identical_to_llama_cpp() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/golden/quant-llamacpp.json"
    );
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (rows, cols) = (
        g["rows"].as_u64().unwrap() as usize,
        g["cols"].as_u64().unwrap() as usize,
    );
    let x = data(rows, cols);
    let mut report = Vec::new();
    for (name, hex) in g["types"].as_object().unwrap() {
        let dtype = DType::from_name(name).unwrap();
        let want = unhex(hex.as_str().unwrap());
        let row_bytes = want.len() / rows;
        let mut got = vec![0u8; want.len()];
        for r in 0..rows {
            quantize_row(
                dtype,
                &x[r * cols..(r + 1) * cols],
                &mut got[r * row_bytes..(r + 1) * row_bytes],
            )
            .unwrap();
        }
        let bs = dtype.block_bytes() as usize;
        let bad = got
            .chunks(bs)
            .zip(want.chunks(bs))
            .filter(|(a, b)| a != b)
            .count();
        if bad > 0 {
            // How far apart, in reconstruction error.
            let err = |q: &[u8]| {
                let mut y = vec![0f32; cols];
                let mut e = 0f64;
                for r in 0..rows {
                    dequantize_row(dtype, &q[r * row_bytes..(r + 1) * row_bytes], &mut y).unwrap();
                    e += y
                        .iter()
                        .zip(&x[r * cols..])
                        .map(|(a, b)| ((a - b) as f64).powi(2))
                        .sum::<f64>();
                }
                e.sqrt()
            };
            report.push(format!(
                "{name}: {bad} of {} blocks differ (error {} vs llama.cpp {})",
                want.len() / bs,
                err(&got),
                err(&want)
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}
