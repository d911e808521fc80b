//! Beam search as a driver above the model, with the semantics of Hugging Face
//! `generate(num_beams=…)` (its `BeamSearchScorer` and `BeamHypotheses`):
//!
//! - every step scores each beam's next tokens as `log_softmax(logits)`, then applies the
//!   per-token processors (logit bias, penalties, no-repeat-n-gram) to those log-probabilities,
//!   and adds the beam's running sum; beams start as copies of the prompt with running sums
//!   `[0, −1e9, …]`, so the first step expands only the first;
//! - the best `max(2, 1 + n_eos) · num_beams` candidates over all beams, best first, are
//!   walked: an end-of-sequence candidate among the first `num_beams` becomes a finished
//!   hypothesis scored `sum_logprobs / generated_len^length_penalty` (the end token counted in
//!   the length, not in the tokens); other candidates fill the next beams until there are
//!   `num_beams`;
//! - the search ends when the finished set holds `num_beams` hypotheses and `early_stopping`
//!   says so (`true`: at once; `false`: when the best candidate, normalised by the current
//!   length, cannot beat the worst finished one; `never`: the same bound taken at the best
//!   length still possible), or at `max_new_tokens`, when the unfinished beams join the set;
//! - the best `n` hypotheses are returned, best first.
//!
//! The driver owns no model: a [`BeamBackend`] advances the beams (the engine's forks a shared
//! prompt cache and copies a beam's own rows only when two beams continue the same parent).

use tuili_sample::processors::{
    apply_logit_bias, apply_penalties, ban_repeated_ngrams, log_softmax_inplace,
};
use tuili_sample::SamplingParams;

/// When beam search stops (Hugging Face's `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// As soon as `num_beams` hypotheses are finished.
    True,
    /// When no beam can plausibly beat the worst finished hypothesis (heuristic bound).
    False,
    /// Only when no beam can beat it at any length still possible (canonical beam search).
    Never,
}

impl EarlyStopping {
    pub fn parse(s: &str) -> Option<EarlyStopping> {
        match s.to_ascii_lowercase().as_str() {
            "true" | "1" => Some(EarlyStopping::True),
            "false" | "0" => Some(EarlyStopping::False),
            "never" => Some(EarlyStopping::Never),
            _ => None,
        }
    }
}

/// Settings of a beam search.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamParams {
    pub num_beams: usize,
    /// Exponent of the generated length that divides a hypothesis' log-probability:
    /// > 0 favours longer outputs, < 0 shorter.
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
}

impl Default for BeamParams {
    fn default() -> Self {
        BeamParams {
            num_beams: 4,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
        }
    }
}

/// A finished hypothesis.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated tokens (an end-of-sequence token that finished it not included).
    pub tokens: Vec<u32>,
    /// Sum of the (processed) log-probabilities, the end token's included.
    pub sum_logprobs: f64,
    /// `sum_logprobs / generated_len^length_penalty`.
    pub score: f64,
    /// Whether an end-of-sequence token finished it (else it reached the length limit).
    pub finished: bool,
}

/// What advances the beams: a model with one cache per beam, or a test's toy model.
pub trait BeamBackend {
    type Error;
    /// Beam `i` of the next step continues beam `parents[i]` of this step and appends
    /// `tokens[i]`; writes the next logits of every beam into `out` (`[num_beams, n_vocab]`).
    fn step(
        &mut self,
        parents: &[usize],
        tokens: &[u32],
        out: &mut [f32],
    ) -> Result<(), Self::Error>;
}

/// Hugging Face's `BeamHypotheses`: the best `num_beams` finished hypotheses.
struct Finished {
    num_beams: usize,
    length_penalty: f64,
    early_stopping: EarlyStopping,
    max_new: usize,
    hyps: Vec<Hypothesis>,
    worst: f64,
}

impl Finished {
    fn add(&mut self, tokens: Vec<u32>, sum_logprobs: f64, generated_len: usize, finished: bool) {
        let score = sum_logprobs / (generated_len as f64).powf(self.length_penalty);
        if self.hyps.len() < self.num_beams || score > self.worst {
            self.hyps.push(Hypothesis {
                tokens,
                sum_logprobs,
                score,
                finished,
            });
            if self.hyps.len() > self.num_beams {
                // Drop the worst (the first of equals, as Python's sort of (score, index)).
                let mut order: Vec<usize> = (0..self.hyps.len()).collect();
                order.sort_by(|&a, &b| self.hyps[a].score.total_cmp(&self.hyps[b].score));
                self.worst = self.hyps[order[1]].score;
                self.hyps.remove(order[0]);
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    /// `is_done(best_sum_logprobs, cur_len)` with lengths counted from the prompt's end.
    fn is_done(&self, best_sum_logprobs: f64, generated_len: usize) -> bool {
        if self.hyps.len() < self.num_beams {
            return false;
        }
        let lp = self.length_penalty;
        let bound_len = match self.early_stopping {
            EarlyStopping::True => return true,
            EarlyStopping::False => generated_len,
            EarlyStopping::Never if lp > 0.0 => self.max_new,
            EarlyStopping::Never => generated_len,
        };
        let highest = best_sum_logprobs / (bound_len as f64).powf(lp);
        self.worst >= highest
    }
}

/// Runs a beam search from the prompt's next-token logits `first` (`[n_vocab]`).
/// `prompt` is the context the processors see; `eos` the end-of-sequence ids; `proc` supplies
/// the per-token processors (bias, penalties, n-gram bans; the sampling stages do not apply).
#[allow(clippy::too_many_arguments)]
pub fn beam_search<B: BeamBackend>(
    backend: &mut B,
    first: &[f32],
    prompt: &[u32],
    eos: &[u32],
    params: &BeamParams,
    proc: &SamplingParams,
    max_new: usize,
    n_return: usize,
) -> Result<Vec<Hypothesis>, B::Error> {
    let mut search = BeamSearch::new(prompt, eos, params, proc, max_new, first.len());
    // [nb, nv]: the logits of every beam; at the start all beams are the prompt.
    let mut logits: Vec<f32> = first.repeat(params.num_beams);
    while let Advance::Continue { parents, tokens } = search.advance(&logits) {
        backend.step(&parents, &tokens, &mut logits)?;
    }
    Ok(search.finish(n_return))
}

/// What a step of [`BeamSearch`] asks for next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// Beam `i` of the next step continues beam `parents[i]` of this one and appends
    /// `tokens[i]`; the next call of [`BeamSearch::advance`] wants their logits.
    Continue {
        parents: Vec<usize>,
        tokens: Vec<u32>,
    },
    /// The search is over: [`BeamSearch::finish`] has the hypotheses.
    Done,
}

/// A beam search one step at a time, for a driver that owns the loop (the serving loop,
/// whose beams are sequences of the paged pool) or the one above ([`beam_search`]).
pub struct BeamSearch {
    nb: usize,
    nv: usize,
    prompt: Vec<u32>,
    eos: Vec<u32>,
    proc: SamplingParams,
    max_new: usize,
    fin: Finished,
    beam_scores: Vec<f32>,
    beams: Vec<Vec<u32>>,
    /// `[nb, nv]`: this step's candidate scores.
    scores: Vec<f32>,
    counts: Vec<u32>,
    history: Vec<u32>,
    n_keep: usize,
    done: bool,
    step: usize,
}

impl BeamSearch {
    /// A search of `params.num_beams` beams after `prompt`, over a vocabulary of `nv`, for at
    /// most `max_new` (≥ 1) tokens.
    pub fn new(
        prompt: &[u32],
        eos: &[u32],
        params: &BeamParams,
        proc: &SamplingParams,
        max_new: usize,
        nv: usize,
    ) -> BeamSearch {
        let nb = params.num_beams;
        BeamSearch {
            nb,
            nv,
            prompt: prompt.to_vec(),
            eos: eos.to_vec(),
            proc: proc.clone(),
            max_new,
            fin: Finished {
                num_beams: nb,
                length_penalty: params.length_penalty as f64,
                early_stopping: params.early_stopping,
                max_new,
                hyps: Vec::new(),
                worst: 1e9,
            },
            // At the start all beams are the prompt: only the first is expanded.
            beam_scores: (0..nb).map(|b| if b == 0 { 0.0 } else { -1e9 }).collect(),
            beams: vec![Vec::new(); nb],
            scores: vec![0f32; nb * nv],
            counts: vec![0u32; nv],
            history: Vec::with_capacity(prompt.len() + max_new),
            n_keep: (2usize.max(1 + eos.len()) * nb).min(nb * nv),
            done: false,
            step: 0,
        }
    }

    /// Beams in the search.
    pub fn num_beams(&self) -> usize {
        self.nb
    }

    /// One step from every beam's next-token logits (`[num_beams, n_vocab]`; at the first
    /// step, the prompt's repeated).
    pub fn advance(&mut self, logits: &[f32]) -> Advance {
        let (nb, nv) = (self.nb, self.nv);
        if self.done || self.step >= self.max_new {
            return Advance::Done;
        }
        let proc = &self.proc;
        for b in 0..nb {
            let row = &mut self.scores[b * nv..(b + 1) * nv];
            row.copy_from_slice(&logits[b * nv..(b + 1) * nv]);
            log_softmax_inplace(row);
            self.history.clear();
            self.history.extend_from_slice(&self.prompt);
            self.history.extend_from_slice(&self.beams[b]);
            apply_logit_bias(row, &proc.logit_bias);
            if proc.penalty_last_n != 0 {
                apply_penalties(
                    row,
                    proc.penalty_window(&self.history),
                    proc.repetition_penalty,
                    proc.presence_penalty,
                    proc.frequency_penalty,
                    &mut self.counts,
                );
            }
            ban_repeated_ngrams(row, &self.history, proc.no_repeat_ngram_size);
            for s in row.iter_mut() {
                *s += self.beam_scores[b];
            }
        }
        // The best n_keep candidates over all beams, best first (ties: lower flat index).
        let mut top: Vec<(f32, usize)> = self.scores.iter().copied().zip(0..).collect();
        let by = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if self.n_keep < top.len() {
            top.select_nth_unstable_by(self.n_keep - 1, by);
            top.truncate(self.n_keep);
        }
        top.sort_unstable_by(by);
        let generated_len = self.step + 1;
        let mut next: Vec<(f32, u32, usize)> = Vec::with_capacity(nb);
        for (rank, &(score, flat)) in top.iter().enumerate() {
            let (b, t) = (flat / nv, (flat % nv) as u32);
            if self.eos.contains(&t) {
                if rank >= nb {
                    continue;
                }
                let toks = self.beams[b].clone();
                self.fin.add(toks, score as f64, generated_len, true);
            } else {
                next.push((score, t, b));
                if next.len() == nb {
                    break;
                }
            }
        }
        // n_keep ≥ (1 + n_eos) · nb candidates hold at least nb that are not end tokens,
        // unless the vocabulary is smaller than that; then the beams repeat the last one.
        while next.len() < nb {
            let last = *next.last().unwrap_or(&(f32::NEG_INFINITY, 0, 0));
            next.push(last);
        }
        self.done = self.done || self.fin.is_done(top[0].0 as f64, generated_len);
        let parents: Vec<usize> = next.iter().map(|n| n.2).collect();
        let tokens: Vec<u32> = next.iter().map(|n| n.1).collect();
        self.beams = next
            .iter()
            .map(|&(_, t, b)| {
                let mut s = self.beams[b].clone();
                s.push(t);
                s
            })
            .collect();
        self.beam_scores = next.iter().map(|n| n.0).collect();
        self.step += 1;
        if self.done || self.step == self.max_new {
            return Advance::Done;
        }
        Advance::Continue { parents, tokens }
    }

    /// The best `n_return` hypotheses, best first; beams still open at the length limit join
    /// the finished ones.
    pub fn finish(mut self, n_return: usize) -> Vec<Hypothesis> {
        if !self.done {
            for (b, toks) in std::mem::take(&mut self.beams).into_iter().enumerate() {
                let len = toks.len();
                self.fin.add(toks, self.beam_scores[b] as f64, len, false);
            }
        }
        let mut hyps = self.fin.hyps;
        hyps.sort_by(|a, b| b.score.total_cmp(&a.score));
        hyps.truncate(n_return);
        hyps
    }
}

#[cfg(test)]
pub(crate) mod toy {
    //! A deterministic toy language model over a tiny vocabulary: the logits of a context are
    //! a hash of it (the same function as `scripts/golden-beam.py`).

    use super::BeamBackend;

    pub fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Logits of the next token after `ctx`: uniform in [−3, 3), plus `eos_bias` on token 0.
    pub fn logits(ctx: &[u32], nv: usize, eos_bias: f64) -> Vec<f32> {
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for &t in ctx {
            h ^= t as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        (0..nv)
            .map(|v| {
                let x = splitmix(h ^ (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                (u * 6.0 - 3.0 + if v == 0 { eos_bias } else { 0.0 }) as f32
            })
            .collect()
    }

    pub struct Toy {
        pub nv: usize,
        pub eos_bias: f64,
        pub beams: Vec<Vec<u32>>,
    }

    impl BeamBackend for Toy {
        type Error = ();
        fn step(&mut self, parents: &[usize], tokens: &[u32], out: &mut [f32]) -> Result<(), ()> {
            let old = std::mem::take(&mut self.beams);
            for (i, (&p, &t)) in parents.iter().zip(tokens).enumerate() {
                let mut ctx = old[p].clone();
                ctx.push(t);
                out[i * self.nv..(i + 1) * self.nv].copy_from_slice(&logits(
                    &ctx,
                    self.nv,
                    self.eos_bias,
                ));
                self.beams.push(ctx);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::toy::{logits, Toy};
    use super::*;

    /// Every sequence of at most `max_new` tokens: those ended by the end token (0) and
    /// those that reach the limit, each with HF's score.
    fn exhaustive(
        prompt: &[u32],
        nv: usize,
        bias: f64,
        max_new: usize,
        lp: f64,
    ) -> Vec<(f64, Vec<u32>)> {
        let mut out = Vec::new();
        let mut stack = vec![(Vec::<u32>::new(), 0f64)];
        while let Some((seq, sum)) = stack.pop() {
            let mut ctx = prompt.to_vec();
            ctx.extend(&seq);
            let mut row = logits(&ctx, nv, bias);
            log_softmax_inplace(&mut row);
            for t in 0..nv as u32 {
                let s = sum + row[t as usize] as f64;
                let len = seq.len() + 1;
                if t == 0 {
                    out.push((s / (len as f64).powf(lp), seq.clone()));
                } else if len == max_new {
                    let mut full = seq.clone();
                    full.push(t);
                    out.push((s / (len as f64).powf(lp), full));
                } else {
                    let mut next = seq.clone();
                    next.push(t);
                    stack.push((next, s));
                }
            }
        }
        out.sort_by(|a, b| b.0.total_cmp(&a.0));
        out
    }

    /// With more beams than there are sequences, nothing is pruned: beam search returns the
    /// exact best sequences of an exhaustive search, for each length penalty.
    #[test]
    fn wide_beams_equal_exhaustive_search() {
        let prompt = [1u32, 2];
        let (nv, bias, max_new) = (4, 0.5, 4);
        for lp in [-1.0f32, 0.0, 0.7, 2.0] {
            let want = exhaustive(&prompt, nv, bias, max_new, lp as f64);
            assert_eq!(want.len(), 1 + 3 + 9 + 27 + 81);
            let mut toy = Toy {
                nv,
                eos_bias: bias,
                beams: vec![prompt.to_vec(); 128],
            };
            let params = BeamParams {
                num_beams: 128,
                length_penalty: lp,
                early_stopping: EarlyStopping::Never,
            };
            let got = beam_search(
                &mut toy,
                &logits(&prompt, nv, bias),
                &prompt,
                &[0],
                &params,
                &SamplingParams::greedy(),
                max_new,
                8,
            )
            .unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.tokens, w.1, "length penalty {lp}");
                assert!((g.score - w.0).abs() < 1e-5, "{} vs {}", g.score, w.0);
            }
        }
    }

    /// A narrow beam finds sequences at least as good as greedy decoding's, and `true`
    /// early stopping never runs longer than `false`.
    #[test]
    fn narrow_beams_and_stopping_rules() {
        let prompt = [3u32];
        let (nv, bias) = (6, 1.0);
        let run = |nb: usize, es: EarlyStopping| {
            let mut toy = Toy {
                nv,
                eos_bias: bias,
                beams: vec![prompt.to_vec(); nb],
            };
            beam_search(
                &mut toy,
                &logits(&prompt, nv, bias),
                &prompt,
                &[0],
                &BeamParams {
                    num_beams: nb,
                    length_penalty: 0.0,
                    early_stopping: es,
                },
                &SamplingParams::greedy(),
                10,
                nb,
            )
            .unwrap()
        };
        let wide = run(4, EarlyStopping::Never);
        assert_eq!(wide.len(), 4);
        assert!(wide.windows(2).all(|w| w[0].score >= w[1].score));
        let quick = run(4, EarlyStopping::True);
        assert!(quick[0].score <= wide[0].score + 1e-9);
        // With length penalty 0, "never" is exact up to beam pruning: never worse than 2 beams.
        assert!(run(2, EarlyStopping::Never)[0].score <= wide[0].score + 1e-9);
    }

    /// The same searches as Hugging Face's beam search (a numpy re-implementation of its
    /// scorer and loop, `scripts/golden-beam.py`) over a grid of beams, length penalties,
    /// stopping rules, n-gram bans and repetition penalties: the same sequences in the same
    /// order, the same scores.
    #[test]
    fn matches_hugging_face_semantics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/golden/beam-hf.json"
        );
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let cases = golden["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 288);
        for (ci, c) in cases.iter().enumerate() {
            let prompt = ids(&c["prompt"]);
            let nv = c["n_vocab"].as_u64().unwrap() as usize;
            let bias = c["eos_bias"].as_f64().unwrap();
            let nb = c["num_beams"].as_u64().unwrap() as usize;
            let params = BeamParams {
                num_beams: nb,
                length_penalty: c["length_penalty"].as_f64().unwrap() as f32,
                early_stopping: EarlyStopping::parse(c["early_stopping"].as_str().unwrap())
                    .unwrap(),
            };
            let proc = SamplingParams {
                no_repeat_ngram_size: c["no_repeat_ngram_size"].as_u64().unwrap() as usize,
                repetition_penalty: c["repetition_penalty"].as_f64().unwrap() as f32,
                penalty_last_n: -1,
                ..SamplingParams::greedy()
            };
            let mut toy = Toy {
                nv,
                eos_bias: bias,
                beams: vec![prompt.clone(); nb],
            };
            let got = beam_search(
                &mut toy,
                &logits(&prompt, nv, bias),
                &prompt,
                &[0],
                &params,
                &proc,
                c["max_new_tokens"].as_u64().unwrap() as usize,
                nb,
            )
            .unwrap();
            let want: Vec<Vec<u32>> = c["sequences"].as_array().unwrap().iter().map(ids).collect();
            let got_seqs: Vec<Vec<u32>> = got.iter().map(|h| h.tokens.clone()).collect();
            assert_eq!(got_seqs, want, "case {ci}: {c}");
            for (h, w) in got.iter().zip(c["scores"].as_array().unwrap()) {
                let w = w.as_f64().unwrap();
                assert!(
                    (h.score - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "case {ci}: score {} vs {w}",
                    h.score
                );
            }
        }
    }
}
