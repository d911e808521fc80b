//! GGUF reader and writer against a real file and against corruption.

use std::path::PathBuf;

use tuili_core::DType;
use tuili_formats::{GgufError, GgufFile, GgufWriter, MetaArray, MetaValue};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

fn stories() -> PathBuf {
    fixtures().join("models/stories260K/stories260K.gguf")
}

#[test]
fn reads_stories260k_header() {
    let f = GgufFile::open(stories()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.metadata.len(), 19);
    assert_eq!(f.tensors.len(), 48);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.data_offset, 14_176);
    assert_eq!(f.require_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.require_u64("llama.block_count").unwrap(), 5);
    assert_eq!(
        f.get_u64("tokenizer.ggml.seperator_token_id").unwrap(),
        Some(4294967295)
    );
    let toks = f.get_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(toks.len(), 512);
    let emb = f.require_tensor("token_embd.weight").unwrap();
    assert_eq!(emb.info.shape, vec![64, 512]);
    assert_eq!(emb.info.dtype, DType::F32);
    assert_eq!(emb.data.len(), 64 * 512 * 4);
    let k = f.tensor_info("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.shape, vec![64, 32]);
    // Wrong-type and missing look-ups are errors, not panics.
    assert!(matches!(
        f.require_u64("general.architecture"),
        Err(GgufError::MetaType { .. })
    ));
    assert!(matches!(
        f.require_u64("nope"),
        Err(GgufError::MissingKey { .. })
    ));
    assert!(f.require_tensor("nope").is_err());
}

#[test]
fn writer_round_trips_every_value_type() {
    let mut w = GgufWriter::new();
    w.set("u8", MetaValue::U8(7))
        .set("i8", MetaValue::I8(-7))
        .set("u16", MetaValue::U16(65535))
        .set("i16", MetaValue::I16(-300))
        .set("u32", MetaValue::U32(1 << 31))
        .set("i32", MetaValue::I32(-1))
        .set("f32", MetaValue::F32(1.5))
        .set("bool", MetaValue::Bool(true))
        .set("str", MetaValue::String("héllo ▁".into()))
        .set("u64", MetaValue::U64(u64::MAX))
        .set("i64", MetaValue::I64(i64::MIN))
        .set("f64", MetaValue::F64(-2.25))
        .set("general.alignment", MetaValue::U32(64))
        .set(
            "arr.str",
            MetaValue::Array(MetaArray::String(vec!["a".into(), "".into()])),
        )
        .set("arr.f32", MetaValue::Array(MetaArray::F32(vec![1.0, -1.0])))
        .set("arr.u8", MetaValue::Array(MetaArray::U8(vec![1, 2, 3])))
        .set("arr.i32", MetaValue::Array(MetaArray::I32(vec![-5])))
        .set(
            "arr.bool",
            MetaValue::Array(MetaArray::Bool(vec![true, false])),
        )
        .set(
            "arr.nested",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::U64(vec![9]),
                MetaArray::String(vec!["x".into()]),
            ])),
        );
    let a: Vec<u8> = (0..4 * 6).map(|i| i as u8).collect();
    w.add_tensor("a", DType::F32, &[3, 2], a.clone()).unwrap();
    let b = vec![0xAB; 18 * 2];
    w.add_tensor("b", DType::Q4_0, &[32, 2], b.clone()).unwrap();
    assert!(w.add_tensor("a", DType::F32, &[1], vec![0; 4]).is_err());
    assert!(w.add_tensor("c", DType::Q4_0, &[33], vec![0; 18]).is_err());
    assert!(w.add_tensor("c", DType::F32, &[2], vec![0; 4]).is_err());
    let bytes = w.to_bytes();
    let f = GgufFile::from_bytes("mem", bytes).unwrap();
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset % 64, 0);
    assert_eq!(f.get("i16"), Some(&MetaValue::I16(-300)));
    assert_eq!(f.get("str"), Some(&MetaValue::String("héllo ▁".into())));
    assert_eq!(f.get("u64"), Some(&MetaValue::U64(u64::MAX)));
    assert_eq!(f.get("i64"), Some(&MetaValue::I64(i64::MIN)));
    assert_eq!(
        f.get("arr.nested"),
        Some(&MetaValue::Array(MetaArray::Array(vec![
            MetaArray::U64(vec![9]),
            MetaArray::String(vec!["x".into()])
        ])))
    );
    assert_eq!(
        f.get("arr.bool"),
        Some(&MetaValue::Array(MetaArray::Bool(vec![true, false])))
    );
    assert_eq!(f.tensor("a").unwrap().data, &a[..]);
    assert_eq!(f.tensor("b").unwrap().data, &b[..]);
    assert_eq!(f.tensor("b").unwrap().info.offset % 64, 0);
    // And the real file survives a read → write → read cycle unchanged.
    let orig = GgufFile::open(stories()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &orig.metadata {
        w.set(k, v.clone());
    }
    for t in orig.tensor_views() {
        w.add_tensor(&t.info.name, t.info.dtype, &t.info.shape, t.data.to_vec())
            .unwrap();
    }
    let copy = GgufFile::from_bytes("copy", w.to_bytes()).unwrap();
    assert_eq!(copy.metadata, orig.metadata);
    assert_eq!(copy.tensors, orig.tensors);
    for (a, b) in copy.tensor_views().zip(orig.tensor_views()) {
        assert_eq!(a.data, b.data);
    }
}

/// Every truncation of a real file is an error that names the file — never a panic, never an
/// attempt at a huge allocation. Every byte of the header is tried, then a stride through the
/// tensor data.
#[test]
fn every_truncation_is_an_error() {
    let bytes = std::fs::read(stories()).unwrap();
    let header_end = 14_176;
    let mut cuts: Vec<usize> = (0..=header_end).collect();
    cuts.extend((header_end..bytes.len()).step_by(997));
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        let r = GgufFile::from_bytes("stories260K.gguf", bytes[..cut].to_vec());
        let e = r
            .err()
            .unwrap_or_else(|| panic!("truncation at {cut} parsed"));
        let msg = e.to_string();
        assert!(msg.starts_with("stories260K.gguf: "), "{msg}");
    }
    // The same through the file-opening path, for a few cuts.
    let dir = std::env::temp_dir().join(format!("tuili-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for cut in [
        0,
        3,
        4,
        8,
        24,
        100,
        5000,
        header_end - 1,
        header_end + 10,
        bytes.len() - 1,
    ] {
        let p = dir.join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("cut{cut}.gguf")), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(GgufFile::open("/nonexistent/model.gguf")
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/model.gguf"));
}

/// Flipping bytes of the header gives an error or a file that still parses — never a panic.
/// Flips in the counts, lengths, types, dims and offsets must be caught.
#[test]
fn byte_flips_never_panic() {
    let bytes = std::fs::read(stories()).unwrap();
    let mut errors = 0;
    let mut total = 0;
    for pos in 0..14_176 {
        for mask in [0x01u8, 0x80, 0xFF] {
            let mut b = bytes.clone();
            b[pos] ^= mask;
            total += 1;
            if GgufFile::from_bytes("flip", b).is_err() {
                errors += 1;
            }
        }
    }
    // Magic, version, counts: always errors.
    for pos in 0..24 {
        let mut b = bytes.clone();
        b[pos] ^= 0x80;
        assert!(GgufFile::from_bytes("flip", b).is_err(), "flip at {pos}");
    }
    assert!(errors > total / 10, "{errors} of {total}");
}

#[test]
fn huge_counts_are_rejected_without_allocating() {
    let mut w = GgufWriter::new();
    w.set("k", MetaValue::Array(MetaArray::String(vec!["a".into()])));
    let mut b = w.to_bytes();
    // Tensor count and metadata count at 8..16 and 16..24.
    let mut t = b.clone();
    t[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes("x", t),
        Err(GgufError::Truncated { .. })
    ));
    // Array length: after key (8+1), type (4), element type (4).
    let at = 24 + 8 + 1 + 4 + 4;
    b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = GgufFile::from_bytes("x", b).unwrap_err().to_string();
    assert!(e.contains("array of"), "{e}");
}

/// `--no-mmap`: the file read into memory parses to the same metadata and tensor bytes as
/// the map; an empty or truncated file is the same error either way; safetensors shards too.
#[test]
fn reading_into_memory_matches_the_map() {
    use tuili_formats::{Load, Safetensors};
    let mapped = GgufFile::open(stories()).unwrap();
    let copied = GgufFile::open_with(stories(), Load::Memory).unwrap();
    assert_eq!(mapped.metadata.len(), copied.metadata.len());
    assert_eq!(mapped.tensors.len(), copied.tensors.len());
    for t in &mapped.tensors {
        assert_eq!(
            mapped.require_tensor(&t.name).unwrap().data,
            copied.require_tensor(&t.name).unwrap().data,
            "{}",
            t.name
        );
    }
    let dir = std::env::temp_dir().join(format!("tuili-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(stories()).unwrap();
    for (name, len) in [("empty.gguf", 0), ("short.gguf", 3), ("cut.gguf", 20_000)] {
        let p = dir.join(name);
        std::fs::write(&p, &bytes[..len]).unwrap();
        let a = GgufFile::open_with(&p, Load::Map)
            .err()
            .map(|e| e.to_string());
        let b = GgufFile::open_with(&p, Load::Memory)
            .err()
            .map(|e| e.to_string());
        assert!(a.is_some(), "{name} parsed");
        assert_eq!(a, b, "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let hf = fixtures().join("models/tinystories-656k-hf");
    let m = Safetensors::open_dir(&hf).unwrap();
    let c = Safetensors::open_dir_with(&hf, Load::Memory).unwrap();
    assert_eq!(m.tensors.len(), c.tensors.len());
    for (name, t) in &m.tensors {
        assert_eq!(t.data(), c.tensors[name].data(), "{name}");
    }
}
