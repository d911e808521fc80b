//! The decode loop allocates nothing: after a warm-up step, a forward pass of one token (the
//! model, the thread pool, the KV cache) and the sampler run with zero heap allocations.
//! This file holds a single test so that no other test's allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tuili_core::{DType, ThreadPool};
use tuili_formats::GgufFile;
use tuili_model::synth::{synth_gguf, SynthSpec};
use tuili_model::{Logits, Model, Scratch};
use tuili_sample::{Sampler, SamplingParams};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn check(model: &Model, label: &str) {
    let pool = ThreadPool::new(2);
    // Wait until the worker has started (its start-up allocates, on its own thread): each
    // part waits for the other, so the worker must claim one (the caller cannot take both).
    let started = AtomicUsize::new(0);
    pool.run(&|_, n| {
        started.fetch_add(1, Ordering::SeqCst);
        while started.load(Ordering::SeqCst) < n {
            std::hint::spin_loop();
        }
    });
    let mut kv = model.new_cache(64).unwrap();
    let mut scratch = Scratch::new();
    // The default chain plus every per-token processor.
    let mut sampler = Sampler::new(
        SamplingParams {
            top_p: 0.9,
            typical_p: 0.95,
            repetition_penalty: 1.1,
            presence_penalty: 0.2,
            frequency_penalty: 0.1,
            logit_bias: vec![(3, -1.0)],
            no_repeat_ngram_size: 3,
            seed: 1,
            ..SamplingParams::default()
        },
        model.config().n_vocab,
    )
    .unwrap();
    sampler.reserve(64);
    sampler.accept_all(&[1, 5, 9]);
    // Prefill and one decode step size every buffer.
    let logits = model
        .forward(&[1, 5, 9], &mut kv, &mut scratch, Logits::Last, &pool)
        .unwrap();
    let mut next = sampler.sample(logits).unwrap();
    sampler.accept(next);
    let logits = model
        .forward(&[next], &mut kv, &mut scratch, Logits::Last, &pool)
        .unwrap();
    next = sampler.sample(logits).unwrap();
    sampler.accept(next);
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        let logits = model
            .forward(&[next], &mut kv, &mut scratch, Logits::Last, &pool)
            .unwrap();
        next = sampler.sample(logits).unwrap();
        sampler.accept(next);
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(
        ALLOCS.load(Ordering::SeqCst),
        0,
        "{label}: the decode loop allocated"
    );
}

#[test]
fn decode_steps_do_not_allocate() {
    // The counter sees allocations (so that a zero below means something).
    COUNTING.store(true, Ordering::SeqCst);
    let probe = std::hint::black_box(vec![1u8; 10]);
    COUNTING.store(false, Ordering::SeqCst);
    assert!(ALLOCS.load(Ordering::SeqCst) >= 1 && probe.len() == 10);
    let stories = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/models/stories260K/stories260K.gguf");
    check(
        &Model::load(Arc::new(GgufFile::open(stories).unwrap())).unwrap(),
        "stories260K (F32)",
    );
    for dtype in [
        DType::Q4_0,
        DType::Q8_0,
        DType::Q4_K,
        DType::Q6_K,
        DType::Q5_K,
        DType::F16,
    ] {
        let w = synth_gguf(&SynthSpec::tiny(dtype)).unwrap();
        let model = Model::load(Arc::new(
            GgufFile::from_bytes("synth.gguf", w.to_bytes()).unwrap(),
        ))
        .unwrap();
        check(&model, dtype.name());
    }
}
