//! Sampling parameters as a user gives them, and their validation.

use crate::SampleError;

/// A stage of the chain whose position the user may choose (`--samplers`). The processors
/// that only adjust individual logits (bias, penalties, n-gram bans) always run first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    TopK,
    TypicalP,
    TopP,
    MinP,
    Temperature,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::TopK,
        Stage::TypicalP,
        Stage::TopP,
        Stage::MinP,
        Stage::Temperature,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::TopK => "top_k",
            Stage::TypicalP => "typical_p",
            Stage::TopP => "top_p",
            Stage::MinP => "min_p",
            Stage::Temperature => "temperature",
        }
    }

    /// Parses a stage name (`top_k`, `top-k`, `typical`, `temp`, … as llama.cpp spells them).
    pub fn parse(s: &str) -> Result<Stage, SampleError> {
        Ok(
            match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
                "top_k" | "k" => Stage::TopK,
                "typical_p" | "typical" | "typ_p" | "y" => Stage::TypicalP,
                "top_p" | "p" => Stage::TopP,
                "min_p" | "m" => Stage::MinP,
                "temperature" | "temp" | "t" => Stage::Temperature,
                _ => {
                    return Err(SampleError::BadParam {
                        name: "samplers",
                        value: s.to_string(),
                        expected: "one of top_k, typical_p, top_p, min_p, temperature",
                    })
                }
            },
        )
    }

    /// Parses a `;`- or `,`-separated order, e.g. `top_k;top_p;temperature`.
    pub fn parse_order(s: &str) -> Result<Vec<Stage>, SampleError> {
        s.split([';', ','])
            .filter(|p| !p.trim().is_empty())
            .map(Stage::parse)
            .collect()
    }
}

/// llama.cpp's default order: top-k → typical-p → top-p → min-p → temperature. The command
/// line's default (`tuili run`, `tuili chat`): its users come from llama.cpp, whose flags and
/// defaults it mirrors.
pub const DEFAULT_ORDER: [Stage; 5] = Stage::ALL;

/// The OpenAI server's default: temperature → top-k → top-p → min-p → typical-p, vLLM's
/// order. OpenAI-API clients expect temperature to reshape the distribution that top-p then
/// cuts (OpenAI's and vLLM's semantics: `temperature: 2, top_p: 0.9` keeps more tokens than
/// at temperature 1), where llama.cpp cuts first and rescales what is left.
pub const OPENAI_ORDER: [Stage; 5] = [
    Stage::Temperature,
    Stage::TopK,
    Stage::TopP,
    Stage::MinP,
    Stage::TypicalP,
];

/// Every parameter of the sampling chain. The defaults are llama.cpp's.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits; 0 means greedy (the most likely token after the penalties).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Nucleus: keep the smallest set of most likely tokens whose probability reaches p; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one; 0 = off.
    pub min_p: f32,
    /// Locally typical sampling: keep the tokens whose surprise is closest to the entropy,
    /// until their mass reaches p; 1 = off.
    pub typical_p: f32,
    /// CTRL-style repetition penalty for tokens in the window: a positive logit is divided by
    /// it, a negative one multiplied; 1 = off.
    pub repetition_penalty: f32,
    /// OpenAI's presence penalty: subtracted once from the logit of every token in the window.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty: subtracted once per occurrence in the window.
    pub frequency_penalty: f32,
    /// Penalty window: the last N tokens of the context (prompt and output); -1 = all of it,
    /// 0 = penalties off.
    pub penalty_last_n: i64,
    /// Added to a token's logit before anything else (−∞ bans it).
    pub logit_bias: Vec<(u32, f32)>,
    /// Never produce an n-gram of this size that already occurs in the context; 0 = off.
    pub no_repeat_ngram_size: usize,
    /// Order of the stages (a stage left out is not applied).
    pub order: Vec<Stage>,
    pub seed: u64,
}

impl SamplingParams {
    /// Whether the `c` largest logits alone decide this chain's choice exactly (the others
    /// may read −∞): greedy, or a top-k of at most `c` before any stage that needs the whole
    /// distribution (typical-p, top-p), with no penalty, bias or n-gram rule that could lift
    /// another token. A tensor-parallel run then gathers only each rank's best `c`.
    pub fn decided_by_top(&self, c: usize) -> bool {
        let penalties = self.penalty_last_n != 0
            && (self.repetition_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0);
        if penalties || !self.logit_bias.is_empty() || self.no_repeat_ngram_size > 0 {
            return false;
        }
        if self.temperature <= 0.0 {
            return true;
        }
        for stage in &self.order {
            match stage {
                Stage::TopK => return (1..=c).contains(&self.top_k),
                // Order-preserving, or relative to the most likely token: the candidates
                // give them exactly.
                Stage::Temperature | Stage::MinP => {}
                Stage::TypicalP if self.typical_p >= 1.0 => {}
                Stage::TopP if self.top_p >= 1.0 => {}
                Stage::TypicalP | Stage::TopP => return false,
            }
        }
        false
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
            no_repeat_ngram_size: 0,
            order: DEFAULT_ORDER.to_vec(),
            seed: 0,
        }
    }
}

fn bad(name: &'static str, value: impl ToString, expected: &'static str) -> SampleError {
    SampleError::BadParam {
        name,
        value: value.to_string(),
        expected,
    }
}

impl SamplingParams {
    /// Argmax decoding with every processor off.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplingParams::default()
        }
    }

    /// Pure sampling from the model's distribution at temperature `t` (every filter off).
    pub fn plain(temperature: f32, seed: u64) -> Self {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..SamplingParams::default()
        }
    }

    /// Checks every value; the error names the parameter.
    pub fn validate(&self) -> Result<(), SampleError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(bad(
                "temperature",
                self.temperature,
                "a finite number ≥ 0 (0 = greedy)",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p", self.top_p, "a number in (0, 1]"));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(bad("min_p", self.min_p, "a number in [0, 1]"));
        }
        if !(self.typical_p > 0.0 && self.typical_p <= 1.0) {
            return Err(bad("typical_p", self.typical_p, "a number in (0, 1]"));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(bad(
                "repetition_penalty",
                self.repetition_penalty,
                "a finite number > 0 (1 = off)",
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(v.is_finite() && (-100.0..=100.0).contains(&v)) {
                return Err(bad(
                    name,
                    v,
                    "a number in [-100, 100] (OpenAI uses [-2, 2])",
                ));
            }
        }
        if self.penalty_last_n < -1 {
            return Err(bad(
                "penalty_last_n",
                self.penalty_last_n,
                "a window ≥ 0, or -1 for the whole context",
            ));
        }
        for &(id, b) in &self.logit_bias {
            if b.is_nan() || b == f32::INFINITY {
                return Err(bad(
                    "logit_bias",
                    format!("{id}: {b}"),
                    "a finite bias, or -inf to ban the token",
                ));
            }
        }
        for (i, s) in self.order.iter().enumerate() {
            if self.order[..i].contains(s) {
                return Err(bad(
                    "samplers",
                    s.name(),
                    "each stage at most once in the order",
                ));
            }
        }
        Ok(())
    }

    /// Checks the token ids of `logit_bias` against a vocabulary.
    pub fn validate_vocab(&self, n_vocab: usize) -> Result<(), SampleError> {
        self.validate()?;
        if let Some(&(id, _)) = self
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= n_vocab)
        {
            return Err(SampleError::BadToken { id, n_vocab });
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Whether any processor that rewrites individual logits is on.
    pub(crate) fn has_logit_processors(&self) -> bool {
        !self.logit_bias.is_empty() || self.has_penalties() || self.no_repeat_ngram_size > 0
    }

    pub(crate) fn has_penalties(&self) -> bool {
        self.penalty_last_n != 0
            && (self.repetition_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }

    /// The penalty window's slice of a context.
    pub fn penalty_window<'a>(&self, history: &'a [u32]) -> &'a [u32] {
        match self.penalty_last_n {
            n if n < 0 => history,
            n => &history[history.len().saturating_sub(n as usize)..],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_logits_decide_greedy_and_top_k_only() {
        let p = SamplingParams::default(); // top-k 40 first
        assert!(p.decided_by_top(64));
        assert!(!p.decided_by_top(32), "top-k 40 needs 40");
        let greedy = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        assert!(greedy.decided_by_top(1));
        // The whole distribution is needed: no top-k, top-p before it, penalties, bias.
        let cases = [
            SamplingParams {
                top_k: 0,
                ..SamplingParams::default()
            },
            SamplingParams {
                order: vec![Stage::TopP, Stage::TopK],
                ..SamplingParams::default()
            },
            SamplingParams {
                presence_penalty: 0.5,
                ..SamplingParams::default()
            },
            SamplingParams {
                logit_bias: vec![(3, 1.0)],
                temperature: 0.0,
                ..SamplingParams::default()
            },
        ];
        for c in cases {
            assert!(!c.decided_by_top(64), "{c:?}");
        }
        // Stages that only rescale or compare with the most likely token may come first.
        let p = SamplingParams {
            order: vec![Stage::Temperature, Stage::MinP, Stage::TopK, Stage::TopP],
            ..SamplingParams::default()
        };
        assert!(p.decided_by_top(40));
    }
}
