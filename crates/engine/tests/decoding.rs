//! Decoding options end to end on the real stories260K model: n > 1, seeds across thread
//! counts, stop strings, logprobs, --explain traces and beam search (its scores re-derived by
//! an independent forward pass, which checks the beams' shared and copied KV caches).

use std::ops::ControlFlow;
use std::path::PathBuf;

use tuili_engine::{
    BeamParams, EarlyStopping, Engine, EngineConfig, EngineError, GenerateRequest, StopReason,
};
use tuili_model::{Logits, Scratch};
use tuili_sample::SamplingParams;

fn engine(threads: usize) -> Engine {
    Engine::load(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/models/stories260K/stories260K.gguf"),
        EngineConfig {
            n_ctx: 256,
            n_batch: 8,
            threads,
        },
    )
    .unwrap()
}

fn go(e: &Engine, req: &GenerateRequest) -> tuili_engine::GenerationStats {
    e.generate(req, &mut |_| ControlFlow::Continue(())).unwrap()
}

fn sampling(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed,
        ..SamplingParams::default()
    }
}

#[test]
fn n_completions_share_the_prefill_and_use_their_own_streams() {
    let e = engine(2);
    let mut req = GenerateRequest::new("Once upon a time", 24, sampling(7));
    req.n = 4;
    let many = go(&e, &req);
    assert_eq!(many.completions.len(), 4);
    for (i, c) in many.completions.iter().enumerate() {
        assert_eq!(c.index, i);
    }
    let distinct: std::collections::BTreeSet<_> =
        many.completions.iter().map(|c| c.tokens.clone()).collect();
    assert!(distinct.len() >= 3, "samples should differ: {distinct:?}");
    // Completion 0 draws from stream 0: the same as a single completion with that seed.
    req.n = 1;
    assert_eq!(go(&e, &req).first().tokens, many.completions[0].tokens);
    // Every decode step belongs to one completion (the prompt ran once).
    let steps: usize = many
        .completions
        .iter()
        .map(|c| c.tokens.len().saturating_sub(1))
        .sum();
    assert_eq!(many.decode_steps, steps);
}

#[test]
fn same_seed_same_text_at_any_thread_count() {
    let mut req = GenerateRequest::new("The little dog", 48, sampling(11));
    req.n = 2;
    let a = go(&engine(1), &req);
    let b = go(&engine(2), &req);
    for (x, y) in a.completions.iter().zip(&b.completions) {
        assert_eq!(x.tokens, y.tokens);
        assert_eq!(x.text, y.text);
    }
}

#[test]
fn stop_strings_end_generation_and_are_not_emitted() {
    let e = engine(2);
    let full = go(
        &e,
        &GenerateRequest::new("Once upon a time", 40, SamplingParams::greedy()),
    );
    let text = full.first().text.clone();
    // A stop string spanning several tokens, in the middle of the greedy text.
    let at = text.find(" named").expect("greedy text has ' named'");
    let mut req = GenerateRequest::new("Once upon a time", 40, SamplingParams::greedy());
    req.stop = vec!["zzz".into(), " named".into()];
    let mut streamed = String::new();
    let stats = e
        .generate(&req, &mut |ev| {
            streamed.push_str(ev.text);
            ControlFlow::Continue(())
        })
        .unwrap();
    let c = stats.first();
    assert_eq!(c.stop, StopReason::StopString(1));
    assert_eq!(c.text, text[..at]);
    assert_eq!(streamed, c.text);
    assert!(full.first().tokens.starts_with(&c.tokens));
    assert!(c.tokens.len() < full.first().tokens.len());
}

#[test]
fn logprobs_and_explain() {
    let e = engine(2);
    let mut req = GenerateRequest::new("Once upon a time", 12, SamplingParams::greedy());
    req.logprobs = Some(3);
    let stats = go(&e, &req);
    let c = stats.first();
    assert_eq!(c.logprobs.len(), c.tokens.len());
    for (lp, &t) in c.logprobs.iter().zip(&c.tokens) {
        // Greedy: the chosen token is the most likely one.
        assert_eq!(lp.chosen.token, t);
        assert_eq!(lp.top[0], lp.chosen);
        assert_eq!(lp.top.len(), 3);
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(lp.chosen.logprob <= 0.0);
    }
    let mut req = GenerateRequest::new("Once upon a time", 6, sampling(3));
    req.explain = Some(4);
    let mut picked = Vec::new();
    let stats = e
        .generate(&req, &mut |ev| {
            if let (Some(t), Some(ex)) = (ev.token, ev.explain) {
                assert_eq!(ex.picked, t);
                assert_eq!(ex.stages[0].name, "model");
                assert_eq!(ex.stages[0].n_candidates, 512);
                assert!(ex.stages.iter().any(|s| s.name == "top_k=40"));
                picked.push(t);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(picked, stats.first().tokens);
}

/// Sum of log p(token | context) over `tokens` after `prompt`, by one fresh forward pass.
fn sum_logprobs(e: &Engine, prompt: &[u32], tokens: &[u32]) -> f64 {
    let m = e.model();
    let mut kv = m.new_cache(prompt.len() + tokens.len()).unwrap();
    let mut scratch = Scratch::new();
    let all: Vec<u32> = prompt.iter().chain(tokens).copied().collect();
    let logits = m
        .forward(&all, &mut kv, &mut scratch, Logits::All, e.pool())
        .unwrap();
    let nv = m.config().n_vocab;
    let mut sum = 0.0;
    for (i, &t) in tokens.iter().enumerate() {
        let row = &logits[(prompt.len() + i - 1) * nv..(prompt.len() + i) * nv];
        let mut lp = row.to_vec();
        tuili_sample::processors::log_softmax_inplace(&mut lp);
        sum += lp[t as usize] as f64;
    }
    sum
}

#[test]
fn beam_scores_equal_an_independent_forward_pass() {
    let e = engine(2);
    for (nb, es) in [
        (2, EarlyStopping::Never),
        (4, EarlyStopping::False),
        (3, EarlyStopping::True),
    ] {
        let mut req = GenerateRequest::new("Once upon a time", 10, SamplingParams::greedy());
        req.ignore_eos = true;
        req.n = nb;
        req.beam = Some(BeamParams {
            num_beams: nb,
            length_penalty: 0.0,
            early_stopping: es,
        });
        let stats = go(&e, &req);
        assert_eq!(stats.completions.len(), nb);
        let prompt = &stats.prompt_tokens;
        let mut prev = f64::INFINITY;
        for c in &stats.completions {
            let score = c.beam_score.unwrap();
            assert!(score <= prev, "beams come best first");
            prev = score;
            assert_eq!(c.tokens.len(), 10);
            let want = sum_logprobs(&e, prompt, &c.tokens);
            assert!(
                (score - want).abs() < 1e-3,
                "{nb} beams: score {score} vs forward pass {want}"
            );
        }
        // The best beam is at least as likely as the greedy continuation.
        let greedy = go(
            &e,
            &GenerateRequest {
                ignore_eos: true,
                ..GenerateRequest::new("Once upon a time", 10, SamplingParams::greedy())
            },
        );
        let g = sum_logprobs(&e, prompt, &greedy.first().tokens);
        assert!(stats.completions[0].beam_score.unwrap() >= g - 1e-4);
    }
}

#[test]
fn bad_requests_are_refused_before_any_work() {
    let e = engine(1);
    let base = GenerateRequest::new("Hi", 4, SamplingParams::greedy());
    let refused = |r: GenerateRequest| match e.prepare(&r) {
        Err(EngineError::BadSetting { name, .. }) => name,
        Err(EngineError::Sample(s)) => panic!("{s}"),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refused(GenerateRequest {
            n: 0,
            ..base.clone()
        }),
        "n"
    );
    assert_eq!(
        refused(GenerateRequest {
            logprobs: Some(1000),
            ..base.clone()
        }),
        "logprobs"
    );
    let beam = |num_beams| {
        Some(BeamParams {
            num_beams,
            ..BeamParams::default()
        })
    };
    assert_eq!(
        refused(GenerateRequest {
            beam: beam(1),
            ..base.clone()
        }),
        "num_beams"
    );
    assert_eq!(
        refused(GenerateRequest {
            beam: beam(2),
            n: 3,
            ..base.clone()
        }),
        "n"
    );
    // A logit bias on a token outside the vocabulary.
    let mut s = SamplingParams::greedy();
    s.logit_bias = vec![(100_000, 1.0)];
    assert!(matches!(
        e.prepare(&GenerateRequest::new("Hi", 4, s)),
        Err(EngineError::Sample(_))
    ));
}
