//! Hub ids through a local HTTP server that answers as the Hugging Face hub does (resolve
//! URLs, ranged GETs, `etag` and `x-repo-commit` headers, 404 for files a repository lacks):
//! the model is fetched into a cache, loads, generates the reference text, and a second load
//! comes from the cache without asking the server for anything.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tuili_engine::hub::{fetch, HubOptions};
use tuili_engine::{Engine, EngineConfig, GenerateRequest};
use tuili_sample::SamplingParams;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/models/tinystories-656k-hf")
}

/// Serves `fixture()` as repository `test-org/tiny-stories` at revision `main`.
fn serve(hits: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut range = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let v = v.trim().to_string();
                    let (a, b) = v.split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().ok()));
                }
            }
            let file = path
                .strip_prefix("/test-org/tiny-stories/resolve/main/")
                .map(|f| fixture().join(f));
            let data = file.and_then(|f| std::fs::read(f).ok());
            let Some(data) = data else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            // Files served (404s for absent optional files are not counted).
            hits.fetch_add(1, Ordering::SeqCst);
            let etag = format!("{:016x}{:08x}", data.len(), path.len());
            let head = |status: &str, extra: String, len: usize| {
                format!(
                    "HTTP/1.1 {status}\r\netag: \"{etag}\"\r\nx-repo-commit: 0123456789abcdef0123456789abcdef01234567\r\n{extra}Content-Length: {len}\r\nConnection: close\r\n\r\n"
                )
            };
            match range {
                Some((a, b)) => {
                    let end = b.unwrap_or(data.len() - 1).min(data.len() - 1);
                    let body = &data[a..=end];
                    let h = head(
                        "206 Partial Content",
                        format!("Content-Range: bytes {a}-{end}/{}\r\n", data.len()),
                        body.len(),
                    );
                    let _ = stream.write_all(h.as_bytes());
                    let _ = stream.write_all(body);
                }
                None => {
                    let _ = stream.write_all(head("200 OK", String::new(), data.len()).as_bytes());
                    let _ = stream.write_all(&data);
                }
            }
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_hub_id_loads_through_a_local_server() {
    let hits = Arc::new(AtomicUsize::new(0));
    let endpoint = serve(hits.clone());
    let cache = std::env::temp_dir().join(format!("tuili-hub-test-{}", std::process::id()));
    let opts = HubOptions {
        endpoint: Some(endpoint),
        cache_dir: Some(cache.clone()),
        progress: false,
    };
    let dir = fetch("test-org/tiny-stories", &opts).unwrap();
    assert!(dir.starts_with(&cache));
    assert!(dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists());
    let e = Engine::load(
        &dir,
        EngineConfig {
            n_ctx: 256,
            n_batch: 32,
            threads: 1,
        },
    )
    .unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("reference_greedy.json")).unwrap(),
    )
    .unwrap();
    let want: Vec<u32> = reference["generated_ids"].as_array().unwrap()[..16]
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let stats = e
        .generate(
            &GenerateRequest::new("Once upon a time", 16, SamplingParams::greedy()),
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(stats.first().tokens, want);
    // Again: every file from the cache (only the absent shard index is asked for again).
    let before = hits.load(Ordering::SeqCst);
    assert_eq!(fetch("test-org/tiny-stories", &opts).unwrap(), dir);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "the cache was not used"
    );
    // A repository the server does not have: a clear error.
    let err = fetch("test-org/missing", &opts).unwrap_err().to_string();
    assert!(err.contains("no config.json"), "{err}");
    std::fs::remove_dir_all(&cache).unwrap();
}
