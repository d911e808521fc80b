//! Any sampling parameters and any logits (NaN, ±∞, huge, tiny): the sampler refuses bad
//! parameters and bad logits with an error, and otherwise picks an id inside the vocabulary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuili_sample::{Sampler, SamplingParams};

fn f(b: &[u8], i: usize) -> f32 {
    let mut w = [0u8; 4];
    for (k, x) in w.iter_mut().enumerate() {
        *x = b.get(i * 4 + k).copied().unwrap_or(0);
    }
    f32::from_le_bytes(w)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 40 {
        return;
    }
    let (head, rest) = data.split_at(40);
    let logits: Vec<f32> = (0..rest.len() / 4).map(|i| f(rest, i)).collect();
    if logits.is_empty() {
        return;
    }
    let n = logits.len();
    let params = SamplingParams {
        temperature: f(head, 0),
        top_k: head[4] as usize,
        top_p: f(head, 2),
        min_p: f(head, 3),
        typical_p: f(head, 4),
        repetition_penalty: f(head, 5),
        presence_penalty: f(head, 6),
        frequency_penalty: f(head, 7),
        penalty_last_n: (head[32] as i8) as i64,
        logit_bias: vec![(head[33] as u32 % n as u32, f(head, 9))],
        no_repeat_ngram_size: (head[34] % 4) as usize,
        seed: head[35] as u64,
        ..SamplingParams::default()
    };
    if let Ok(mut s) = Sampler::new(params, n) {
        s.accept_all(&[0, 1, 0, 1]);
        if let Ok(id) = s.sample(&logits) {
            assert!((id as usize) < n, "sampled {id} of {n}");
        }
    }
});
