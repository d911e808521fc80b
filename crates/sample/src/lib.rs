//! `tuili-sample`: logits → next token.
//!
//! Owns: validation of sampling parameters, the logits processors, the filter stages, the
//! seeded random draw, log-probabilities and the `--explain` trace. May not: run the model or
//! touch token text.
//!
//! The chain, in this order (the README documents it):
//! 1. logit bias;
//! 2. repetition, presence and frequency penalties over the penalty window;
//! 3. no-repeat-n-gram bans;
//! 4. temperature 0 → greedy: the most likely token after 1–3 (lowest id on ties);
//! 5. the stages in `order` (default llama.cpp's: top-k → typical-p → top-p → min-p →
//!    temperature); probabilities inside a stage are the softmax of the candidates that are
//!    left, at the logits as the earlier stages left them;
//! 6. a draw from the softmax of what is left, with the request's ChaCha20 stream.

mod params;
pub mod processors;
mod rng;

pub use params::{SamplingParams, Stage, DEFAULT_ORDER, OPENAI_ORDER};
pub use rng::{fresh_seed, Rng};

use processors::{apply_logit_bias, apply_penalties, ban_repeated_ngrams, logsumexp};

/// Errors of sampling.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SampleError {
    #[error("invalid {name} = {value}: expected {expected}")]
    BadParam {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("token id {id} is outside the vocabulary of {n_vocab} tokens")]
    BadToken { id: u32, n_vocab: usize },
    #[error("no logits to sample from")]
    Empty,
    #[error("got {got} logits for a vocabulary of {n_vocab}")]
    VocabMismatch { got: usize, n_vocab: usize },
    #[error("the model produced a non-finite logit ({value}) for token {token}")]
    NonFinite { token: u32, value: f32 },
    #[error("every token is banned (logit bias or n-gram bans left no candidate)")]
    NoCandidates,
}

/// One token and its log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
}

/// The log-probabilities of one step: the chosen token's and the `n` most likely tokens'
/// (most likely first), under the model's own distribution (the softmax of the raw logits,
/// before any processor; vLLM's default).
#[derive(Debug, Clone, PartialEq)]
pub struct StepLogprobs {
    pub chosen: TokenLogprob,
    pub top: Vec<TokenLogprob>,
}

/// Computes [`StepLogprobs`] for a row of logits.
pub fn logprobs(logits: &[f32], chosen: u32, n: usize) -> StepLogprobs {
    let lse = logsumexp(logits);
    let lp = |t: u32| TokenLogprob {
        token: t,
        logprob: (logits[t as usize] as f64 - lse) as f32,
    };
    let top = top_n(logits.iter().copied().enumerate(), n)
        .into_iter()
        .map(|(_, t)| lp(t))
        .collect();
    StepLogprobs {
        chosen: lp(chosen),
        top,
    }
}

/// The n largest (value, id) pairs, largest first, lowest id first among equals.
fn top_n(items: impl Iterator<Item = (usize, f32)>, n: usize) -> Vec<(f32, u32)> {
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return best;
    }
    for (i, v) in items {
        if v.is_nan() {
            continue;
        }
        if best.len() == n && v <= best[n - 1].0 {
            continue;
        }
        let at = best.partition_point(|&(b, _)| b >= v);
        best.insert(at, (v, i as u32));
        best.truncate(n);
    }
    best
}

/// What one processor or stage did, for `--explain`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainStage {
    /// The processor and its setting, e.g. `top_k=40`; `model` for the raw distribution.
    pub name: String,
    /// Candidates left (tokens with non-zero probability).
    pub n_candidates: usize,
    /// The most likely candidates and their probabilities after this stage.
    pub top: Vec<(u32, f32)>,
}

/// The trace of one sampling step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Explain {
    pub stages: Vec<ExplainStage>,
    pub picked: u32,
}

/// A sampler: parameters, the request's RNG stream, the context so far, and reusable buffers.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    n_vocab: usize,
    rng: Rng,
    /// Tokens of the context (prompt and output) the sampler was told about.
    history: Vec<u32>,
    // [n_vocab] working copy of the logits for the per-token processors.
    work: Vec<f32>,
    // [n_vocab] zeros; scratch of the penalty counts.
    counts: Vec<u32>,
    /// (logit, token id) of the candidates still in the running.
    cand: Vec<(f32, u32)>,
    /// Whether `cand` is sorted by descending logit.
    sorted: bool,
    /// Probabilities of `cand`.
    probs: Vec<f32>,
    /// Typical-p scratch: (|surprise − entropy|, index into `cand`), then the kept candidates.
    typ: Vec<(f64, usize)>,
    kept: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler for a vocabulary of `n_vocab` tokens, drawing from stream 0 of the seed.
    pub fn new(params: SamplingParams, n_vocab: usize) -> Result<Sampler, SampleError> {
        Sampler::with_stream(params, n_vocab, 0)
    }

    /// A sampler drawing from stream `stream` of the seed (sample i of `n > 1` uses stream i).
    pub fn with_stream(
        params: SamplingParams,
        n_vocab: usize,
        stream: u64,
    ) -> Result<Sampler, SampleError> {
        params.validate_vocab(n_vocab)?;
        let rng = Rng::with_stream(params.seed, stream);
        Ok(Sampler {
            params,
            n_vocab,
            rng,
            history: Vec::new(),
            work: Vec::new(),
            counts: Vec::new(),
            cand: Vec::new(),
            sorted: false,
            probs: Vec::new(),
            typ: Vec::new(),
            kept: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Makes room for `n` context tokens, so that `accept` does not allocate.
    pub fn reserve(&mut self, n: usize) {
        self.history.reserve(n.saturating_sub(self.history.len()));
    }

    /// Records a token of the context (every prompt token, then every generated one); the
    /// penalties and n-gram bans look at these.
    pub fn accept(&mut self, token: u32) {
        self.history.push(token);
    }

    pub fn accept_all(&mut self, tokens: &[u32]) {
        self.history.extend_from_slice(tokens);
    }

    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Picks the next token from one row of logits (it does not `accept` it).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SampleError> {
        self.run(logits, None)
    }

    /// As [`Sampler::sample`], and records what each stage did (the `top` most likely
    /// candidates after each).
    pub fn sample_explained(
        &mut self,
        logits: &[f32],
        top: usize,
        explain: &mut Explain,
    ) -> Result<u32, SampleError> {
        explain.stages.clear();
        let t = self.run(logits, Some((top, explain)))?;
        explain.picked = t;
        Ok(t)
    }

    fn check(&self, logits: &[f32]) -> Result<(), SampleError> {
        if logits.is_empty() {
            return Err(SampleError::Empty);
        }
        if logits.len() != self.n_vocab {
            return Err(SampleError::VocabMismatch {
                got: logits.len(),
                n_vocab: self.n_vocab,
            });
        }
        if let Some((i, &v)) = logits
            .iter()
            .enumerate()
            .find(|(_, v)| v.is_nan() || **v == f32::INFINITY)
        {
            return Err(SampleError::NonFinite {
                token: i as u32,
                value: v,
            });
        }
        Ok(())
    }

    fn run(
        &mut self,
        logits: &[f32],
        mut explain: Option<(usize, &mut Explain)>,
    ) -> Result<u32, SampleError> {
        self.check(logits)?;
        let p = &self.params;
        if p.is_greedy() && !p.has_logit_processors() && explain.is_none() {
            return Ok(argmax(logits));
        }
        if let Some((n, e)) = explain.as_mut() {
            e.stages.push(snapshot_row("model".into(), logits, *n));
        }
        // 1–3: the per-token processors, on a working copy indexed by token id.
        let row: &[f32] = if p.has_logit_processors() {
            self.work.clear();
            self.work.extend_from_slice(logits);
            if !p.logit_bias.is_empty() {
                apply_logit_bias(&mut self.work, &p.logit_bias);
                if let Some((n, e)) = explain.as_mut() {
                    e.stages
                        .push(snapshot_row("logit_bias".into(), &self.work, *n));
                }
            }
            if p.has_penalties() {
                if self.counts.len() < self.n_vocab {
                    self.counts.resize(self.n_vocab, 0);
                }
                let window = p.penalty_window(&self.history);
                apply_penalties(
                    &mut self.work,
                    window,
                    p.repetition_penalty,
                    p.presence_penalty,
                    p.frequency_penalty,
                    &mut self.counts,
                );
                if let Some((n, e)) = explain.as_mut() {
                    let mut parts = Vec::new();
                    if p.repetition_penalty != 1.0 {
                        parts.push(format!("repeat={}", p.repetition_penalty));
                    }
                    if p.presence_penalty != 0.0 {
                        parts.push(format!("presence={}", p.presence_penalty));
                    }
                    if p.frequency_penalty != 0.0 {
                        parts.push(format!("frequency={}", p.frequency_penalty));
                    }
                    parts.push(format!("last_n={}", p.penalty_last_n));
                    let name = format!("penalties({})", parts.join(","));
                    e.stages.push(snapshot_row(name, &self.work, *n));
                }
            }
            if p.no_repeat_ngram_size > 0 {
                ban_repeated_ngrams(&mut self.work, &self.history, p.no_repeat_ngram_size);
                if let Some((n, e)) = explain.as_mut() {
                    let name = format!("no_repeat_ngram_size={}", p.no_repeat_ngram_size);
                    e.stages.push(snapshot_row(name, &self.work, *n));
                }
            }
            &self.work
        } else {
            logits
        };
        if row.iter().all(|&v| v == f32::NEG_INFINITY) {
            return Err(SampleError::NoCandidates);
        }
        // 4: greedy.
        if p.is_greedy() {
            return Ok(argmax(row));
        }
        // 5: the stages, over the candidates with a non-zero probability.
        self.cand.clear();
        self.cand.extend(
            row.iter()
                .enumerate()
                .filter(|(_, &l)| l > f32::NEG_INFINITY)
                .map(|(i, &l)| (l, i as u32)),
        );
        self.sorted = false;
        for si in 0..self.params.order.len() {
            let stage = self.params.order[si];
            if !self.apply_stage(stage) {
                continue;
            }
            if let Some((n, e)) = explain.as_mut() {
                let p = &self.params;
                let name = match stage {
                    Stage::TopK => format!("top_k={}", p.top_k),
                    Stage::TypicalP => format!("typical_p={}", p.typical_p),
                    Stage::TopP => format!("top_p={}", p.top_p),
                    Stage::MinP => format!("min_p={}", p.min_p),
                    Stage::Temperature => format!("temperature={}", p.temperature),
                };
                e.stages.push(snapshot_cand(name, &self.cand, *n));
            }
        }
        // 6: the draw.
        self.softmax();
        let u = self.rng.next_f64();
        let mut cum = 0.0f64;
        for (pr, c) in self.probs.iter().zip(&self.cand) {
            cum += *pr as f64;
            if u < cum {
                return Ok(c.1);
            }
        }
        // Rounding left u above the last cumulative sum: the last candidate with p > 0.
        let last = self
            .probs
            .iter()
            .rposition(|&pr| pr > 0.0)
            .unwrap_or(self.cand.len() - 1);
        Ok(self.cand[last].1)
    }

    /// Sorts the candidates by descending logit (ties: lower id first), once.
    fn sort(&mut self) {
        if !self.sorted {
            self.cand.sort_unstable_by(by_logit);
            self.sorted = true;
        }
    }

    /// Probabilities of the candidates at their current logits, into `probs`.
    fn softmax(&mut self) {
        let max = self
            .cand
            .iter()
            .map(|c| c.0)
            .fold(f32::NEG_INFINITY, f32::max);
        self.probs.clear();
        self.probs
            .extend(self.cand.iter().map(|c| (c.0 - max).exp()));
        let sum: f32 = self.probs.iter().sum();
        for v in self.probs.iter_mut() {
            *v /= sum;
        }
    }

    /// Applies one stage; false when it is off (and did nothing).
    fn apply_stage(&mut self, stage: Stage) -> bool {
        let p = &self.params;
        match stage {
            Stage::TopK => {
                let k = p.top_k;
                if k == 0 {
                    return false;
                }
                if k < self.cand.len() {
                    if !self.sorted {
                        self.cand.select_nth_unstable_by(k - 1, by_logit);
                    }
                    self.cand.truncate(k);
                }
                self.sort();
            }
            Stage::TopP => {
                let top_p = p.top_p;
                if top_p >= 1.0 {
                    return false;
                }
                self.sort();
                self.softmax();
                // The smallest prefix whose mass reaches p.
                let mut cum = 0.0f64;
                let mut keep = self.cand.len();
                for (i, &pr) in self.probs.iter().enumerate() {
                    cum += pr as f64;
                    if cum >= top_p as f64 {
                        keep = i + 1;
                        break;
                    }
                }
                self.cand.truncate(keep.max(1));
            }
            Stage::MinP => {
                let min_p = p.min_p;
                if min_p <= 0.0 {
                    return false;
                }
                // p_i ≥ min_p · p_max  ⇔  l_i ≥ l_max + ln(min_p).
                let max = self
                    .cand
                    .iter()
                    .map(|c| c.0)
                    .fold(f32::NEG_INFINITY, f32::max);
                let threshold = max + min_p.ln();
                self.cand.retain(|c| c.0 >= threshold);
            }
            Stage::TypicalP => {
                let mass = p.typical_p;
                if mass >= 1.0 {
                    return false;
                }
                self.softmax();
                // Entropy H = −Σ p log p; keep the tokens whose surprise −log p is closest to
                // H until their mass reaches `mass`.
                let ent: f64 = self
                    .probs
                    .iter()
                    .filter(|&&pr| pr > 0.0)
                    .map(|&pr| -(pr as f64) * (pr as f64).ln())
                    .sum();
                self.typ.clear();
                self.typ.extend(
                    self.probs
                        .iter()
                        .enumerate()
                        .map(|(i, &pr)| ((-(pr as f64).ln() - ent).abs(), i)),
                );
                self.typ
                    .sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let mut cum = 0.0f64;
                let mut keep = self.typ.len();
                for (j, &(_, i)) in self.typ.iter().enumerate() {
                    cum += self.probs[i] as f64;
                    if cum >= mass as f64 {
                        keep = j + 1;
                        break;
                    }
                }
                self.kept.clear();
                self.kept
                    .extend(self.typ[..keep.max(1)].iter().map(|&(_, i)| self.cand[i]));
                std::mem::swap(&mut self.cand, &mut self.kept);
                self.sorted = false;
            }
            Stage::Temperature => {
                let inv_t = 1.0 / p.temperature;
                if inv_t == 1.0 {
                    return false;
                }
                for c in self.cand.iter_mut() {
                    c.0 *= inv_t;
                }
            }
        }
        true
    }
}

/// Descending by logit, ties by lower id (deterministic).
fn by_logit(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The distribution of a full row (−∞ = excluded), summarised.
fn snapshot_row(name: String, row: &[f32], n: usize) -> ExplainStage {
    let lse = logsumexp(row);
    let n_candidates = row.iter().filter(|&&l| l > f32::NEG_INFINITY).count();
    let top = top_n(row.iter().copied().enumerate(), n)
        .into_iter()
        .map(|(l, t)| (t, (l as f64 - lse).exp() as f32))
        .collect();
    ExplainStage {
        name,
        n_candidates,
        top,
    }
}

/// The distribution over the remaining candidates, summarised.
fn snapshot_cand(name: String, cand: &[(f32, u32)], n: usize) -> ExplainStage {
    let logits: Vec<f32> = cand.iter().map(|c| c.0).collect();
    let lse = logsumexp(&logits);
    let top = top_n(cand.iter().map(|&(l, t)| (t as usize, l)), n)
        .into_iter()
        .map(|(l, t)| (t, (l as f64 - lse).exp() as f32))
        .collect();
    ExplainStage {
        name,
        n_candidates: cand.len(),
        top,
    }
}

/// Index of the largest logit (the lowest index among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, k: usize, p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            min_p: 0.0,
            seed,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn validation_names_the_parameter() {
        let bad = |p: SamplingParams| match Sampler::new(p, 4).unwrap_err() {
            SampleError::BadParam { name, .. } => name,
            e => panic!("{e}"),
        };
        assert_eq!(bad(params(-1.0, 0, 1.0, 0)), "temperature");
        assert_eq!(bad(params(f32::NAN, 0, 1.0, 0)), "temperature");
        assert_eq!(bad(params(1.0, 0, 0.0, 0)), "top_p");
        assert_eq!(bad(params(1.0, 0, 1.5, 0)), "top_p");
        let base = params(1.0, 0, 1.0, 0);
        for (p, name) in [
            (
                SamplingParams {
                    min_p: 2.0,
                    ..base.clone()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    typical_p: 0.0,
                    ..base.clone()
                },
                "typical_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..base.clone()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: f32::INFINITY,
                    ..base.clone()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    penalty_last_n: -2,
                    ..base.clone()
                },
                "penalty_last_n",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(1, f32::NAN)],
                    ..base.clone()
                },
                "logit_bias",
            ),
            (
                SamplingParams {
                    order: vec![Stage::TopK, Stage::TopK],
                    ..base.clone()
                },
                "samplers",
            ),
        ] {
            assert_eq!(bad(p), name);
        }
        assert_eq!(
            Sampler::new(
                SamplingParams {
                    logit_bias: vec![(4, 1.0)],
                    ..base.clone()
                },
                4
            )
            .unwrap_err(),
            SampleError::BadToken { id: 4, n_vocab: 4 }
        );
        assert!(Stage::parse_order("top_k;bogus").is_err());
        assert_eq!(
            Stage::parse_order("temp;top-p").unwrap(),
            vec![Stage::Temperature, Stage::TopP]
        );
        let mut s = Sampler::new(base, 2).unwrap();
        assert_eq!(s.sample(&[]), Err(SampleError::Empty));
        assert!(matches!(
            s.sample(&[0.0, 1.0, 2.0]),
            Err(SampleError::VocabMismatch { got: 3, n_vocab: 2 })
        ));
        assert!(s.sample(&[0.0, f32::NAN]).is_err());
        // −∞ (a masked token) is fine.
        assert_eq!(s.sample(&[f32::NEG_INFINITY, 0.0]).unwrap(), 1);
        assert_eq!(
            s.sample(&[f32::NEG_INFINITY, f32::NEG_INFINITY]),
            Err(SampleError::NoCandidates)
        );
    }

    #[test]
    fn greedy_is_argmax_after_the_processors() {
        let mut s = Sampler::new(SamplingParams::greedy(), 4).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, 3.0]).unwrap(), 1);
        let mut k1 = Sampler::new(params(5.0, 1, 1.0, 9), 3).unwrap();
        assert_eq!(k1.sample(&[0.1, 3.0, 2.0]).unwrap(), 1);
        // A bias changes the winner; so does a repetition penalty on the leader.
        let mut s = Sampler::new(
            SamplingParams {
                logit_bias: vec![(0, 3.0)],
                ..SamplingParams::greedy()
            },
            3,
        )
        .unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 2.0]).unwrap(), 0);
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: 2.0,
                ..SamplingParams::greedy()
            },
            3,
        )
        .unwrap();
        s.accept(1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0]).unwrap(), 2);
    }

    #[test]
    fn explain_traces_each_active_stage() {
        let p = SamplingParams {
            temperature: 0.5,
            top_k: 3,
            top_p: 0.9,
            min_p: 0.0,
            logit_bias: vec![(4, -1.0)],
            seed: 3,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(p, 5).unwrap();
        let mut e = Explain::default();
        let t = s
            .sample_explained(&[1.0, 4.0, 3.0, 2.0, 5.0], 2, &mut e)
            .unwrap();
        let names: Vec<&str> = e.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "model",
                "logit_bias",
                "top_k=3",
                "top_p=0.9",
                "temperature=0.5"
            ]
        );
        assert_eq!(e.stages[0].top[0].0, 4);
        assert_eq!(e.stages[1].top[0].0, 1);
        assert_eq!(e.stages[2].n_candidates, 3);
        assert_eq!(e.picked, t);
        let total: f32 = e.stages[4].top.iter().map(|x| x.1).sum();
        assert!(total <= 1.0 + 1e-6);
    }

    #[test]
    fn logprobs_are_the_raw_distribution() {
        let l = [1.0f32, 3.0, 2.0];
        let lp = logprobs(&l, 2, 2);
        let z: f32 = l.iter().map(|x| x.exp()).sum();
        assert!((lp.chosen.logprob - (2.0f32.exp() / z).ln()).abs() < 1e-6);
        assert_eq!(
            lp.top.iter().map(|t| t.token).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(logprobs(&l, 0, 0).top.is_empty());
        assert_eq!(logprobs(&l, 0, 10).top.len(), 3);
    }
}
