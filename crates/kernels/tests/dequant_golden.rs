//! Dequantization of every type against gguf-py's (see scripts/golden-dequant.py).

use tuili_core::DType;
use tuili_kernels::types::dequantize_row;

fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 {c}"),
        }
    };
    let s: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[test]
fn every_type_matches_gguf_py() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/golden/dequant-gguf-py.json"
    );
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    let mut seen = Vec::new();
    for case in cases {
        let dtype = DType::from_name(case["type"].as_str().unwrap()).unwrap();
        let raw = b64(case["raw_base64"].as_str().unwrap());
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let mut got = vec![0f32; want.len()];
        dequantize_row(dtype, &raw, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let tol = 1e-6 * w.abs().max(1.0);
            assert!(
                (g - w).abs() <= tol,
                "{dtype} element {i}: got {g}, gguf-py {w}"
            );
        }
        seen.push(dtype);
    }
    for t in tuili_kernels::types::runnable() {
        assert!(
            seen.contains(&t) || t == DType::Q8_K || t.is_tuili_own(),
            "{t} has no golden case"
        );
    }
}
