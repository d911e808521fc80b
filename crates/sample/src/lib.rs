//! `tuili-sample`: logits → next token.
//!
//! Owns: validation of sampling parameters, the candidate filters (top-k, top-p, min-p),
//! temperature, and the seeded random draw. May not: run the model or touch token text.
//! The order of the chain is llama.cpp's: top-k → top-p → min-p → temperature → draw, so the
//! same parameters mean the same thing in both.

mod rng;

pub use rng::Rng;

/// Errors of sampling.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SampleError {
    #[error("temperature must be a finite number ≥ 0 (0 = greedy), got {0}")]
    Temperature(f32),
    #[error("top-p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("min-p must be in [0, 1], got {0}")]
    MinP(f32),
    #[error("no logits to sample from")]
    Empty,
    #[error("the model produced a non-finite logit ({value}) for token {token}")]
    NonFinite { token: u32, value: f32 },
}

/// Sampling parameters, as a user gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 means no limit.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one; 0 = off.
    pub min_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<(), SampleError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SampleError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SampleError::TopP(self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(SampleError::MinP(self.min_p));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// A sampler: parameters, RNG state and a reusable candidate buffer.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// (logit, token id), sorted by logit once filtered.
    cand: Vec<(f32, u32)>,
    /// Probabilities of `cand`.
    probs: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler, SampleError> {
        params.validate()?;
        let rng = Rng::new(params.seed);
        Ok(Sampler {
            params,
            rng,
            cand: Vec::new(),
            probs: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SampleError> {
        if logits.is_empty() {
            return Err(SampleError::Empty);
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
        if self.params.is_greedy() {
            return Ok(argmax(logits));
        }
        let p = &self.params;
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        // Descending by logit, ties by lower id (deterministic).
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            self.cand.truncate(p.top_k);
        }
        self.cand.sort_unstable_by(by_logit);
        if p.top_p < 1.0 || p.min_p > 0.0 {
            // Probabilities of the remaining candidates at temperature 1 (llama.cpp's order).
            softmax_into(&self.cand, &mut self.probs);
            let probs = &self.probs;
            if p.top_p < 1.0 {
                let mut cum = 0.0;
                let mut keep = probs.len();
                for (i, pr) in probs.iter().enumerate() {
                    cum += pr;
                    if cum >= p.top_p {
                        keep = i + 1;
                        break;
                    }
                }
                self.cand.truncate(keep.max(1));
            }
            if p.min_p > 0.0 {
                let threshold = probs[0] * p.min_p;
                let keep = probs
                    .iter()
                    .take(self.cand.len())
                    .take_while(|&&pr| pr >= threshold)
                    .count();
                self.cand.truncate(keep.max(1));
            }
        }
        let inv_t = 1.0 / p.temperature;
        for c in self.cand.iter_mut() {
            c.0 *= inv_t;
        }
        softmax_into(&self.cand, &mut self.probs);
        let probs = &self.probs;
        let u = self.rng.next_f64();
        let mut cum = 0.0f64;
        for (pr, c) in probs.iter().zip(&self.cand) {
            cum += *pr as f64;
            if u < cum {
                return Ok(c.1);
            }
        }
        // Rounding left u above the last cumulative sum: the least likely kept candidate.
        Ok(self.cand[self.cand.len() - 1].1)
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

/// Softmax over sorted candidates (the first holds the maximum), into a reused buffer.
fn softmax_into(cand: &[(f32, u32)], out: &mut Vec<f32>) {
    let max = cand.first().map(|c| c.0).unwrap_or(0.0);
    out.clear();
    out.extend(cand.iter().map(|c| (c.0 - max).exp()));
    let sum: f32 = out.iter().sum();
    for v in out.iter_mut() {
        *v /= sum;
    }
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
        }
    }

    #[test]
    fn validation() {
        assert!(Sampler::new(params(-1.0, 0, 1.0, 0)).is_err());
        assert!(Sampler::new(params(f32::NAN, 0, 1.0, 0)).is_err());
        assert!(Sampler::new(params(1.0, 0, 0.0, 0)).is_err());
        assert!(Sampler::new(params(1.0, 0, 1.5, 0)).is_err());
        let mut bad = params(1.0, 0, 1.0, 0);
        bad.min_p = 2.0;
        assert_eq!(Sampler::new(bad).unwrap_err(), SampleError::MinP(2.0));
        let mut s = Sampler::new(params(1.0, 0, 1.0, 0)).unwrap();
        assert!(s.sample(&[]).is_err());
        assert!(s.sample(&[0.0, f32::NAN]).is_err());
        // −∞ (a masked token) is fine.
        assert_eq!(s.sample(&[f32::NEG_INFINITY, 0.0]).unwrap(), 1);
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, 3.0]).unwrap(), 1);
        let mut k1 = Sampler::new(params(5.0, 1, 1.0, 9)).unwrap();
        assert_eq!(k1.sample(&[0.1, 3.0, 2.0]).unwrap(), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_frequencies_follow_softmax() {
        let logits = [1.0f32, 2.0, 0.5, 1.5];
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, 0, 1.0, seed)).unwrap();
            (0..20000)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for (i, l) in logits.iter().enumerate() {
            let freq = a.iter().filter(|&&t| t == i as u32).count() as f32 / a.len() as f32;
            assert!((freq - l.exp() / z).abs() < 0.015, "token {i}: {freq}");
        }
    }

    #[test]
    fn filters_restrict_the_candidates() {
        let logits = [1.0f32, 4.0, 3.0, 2.0, 0.0];
        let mut s = Sampler::new(params(1.0, 2, 1.0, 1)).unwrap();
        for _ in 0..500 {
            assert!(matches!(s.sample(&logits).unwrap(), 1 | 2));
        }
        // top-p 0.5: token 1 alone has p ≈ 0.64 ≥ 0.5.
        let mut s = Sampler::new(params(1.0, 0, 0.5, 1)).unwrap();
        for _ in 0..500 {
            assert_eq!(s.sample(&logits).unwrap(), 1);
        }
        // min-p 0.3: tokens with p ≥ 0.3·p_max are 1 (1.0) and 2 (e^-1 ≈ 0.37).
        let mut p = params(1.0, 0, 1.0, 1);
        p.min_p = 0.3;
        let mut s = Sampler::new(p).unwrap();
        let seen: std::collections::BTreeSet<u32> =
            (0..2000).map(|_| s.sample(&logits).unwrap()).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2]);
        // A very low temperature is close to greedy.
        let mut s = Sampler::new(params(0.01, 0, 1.0, 3)).unwrap();
        for _ in 0..200 {
            assert_eq!(s.sample(&logits).unwrap(), 1);
        }
    }
}
