//! OpenAI's request and response shapes, and their translation to engine requests.
//!
//! One body type serves `/v1/completions` and `/v1/chat/completions` (each checks the fields
//! it needs); the vLLM extension fields (`top_k`, `min_p`, `repetition_penalty`,
//! `use_beam_search`, `best_of`, `length_penalty`, `early_stopping`, `ignore_eos`, …) are
//! accepted by both. Every refusal names the field it is about.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{json, Value};
use tuili_engine::{BeamParams, EarlyStopping, GenerateRequest, StopReason, MAX_LOGPROBS};
use tuili_sample::{SamplingParams, Stage, StepLogprobs, OPENAI_ORDER};
use tuili_tokenizer::Tokenizer;

use crate::error::ApiError;

/// A prompt as OpenAI's completions endpoint takes it.
#[derive(Debug)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

impl<'de> Deserialize<'de> for Prompt {
    /// By hand rather than `untagged`, whose one message ("did not match any variant")
    /// names neither the form expected nor the element at fault.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Prompt, D::Error> {
        Prompt::from_value(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Prompt {
    const FORMS: &'static str =
        "a string, a list of strings, a list of token ids or a list of token-id lists";

    fn from_value(v: Value) -> Result<Prompt, String> {
        let ids = |v: &[Value], at: &str| -> Result<Vec<u32>, String> {
            v.iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_u64()
                        .and_then(|id| u32::try_from(id).ok())
                        .ok_or_else(|| {
                            format!(
                                "token ids are integers from 0 to {}; {at}[{i}] is {x}",
                                u32::MAX
                            )
                        })
                })
                .collect()
        };
        let list = match v {
            Value::String(t) => return Ok(Prompt::Text(t)),
            Value::Array(list) if !list.is_empty() => list,
            Value::Array(_) => return Err(format!("the list is empty; send {}", Self::FORMS)),
            other => return Err(format!("expected {}, got {other}", Self::FORMS)),
        };
        if list.iter().all(Value::is_string) {
            let texts = list.into_iter().filter_map(|x| match x {
                Value::String(t) => Some(t),
                _ => None,
            });
            Ok(Prompt::Texts(texts.collect()))
        } else if list.iter().all(Value::is_number) {
            Ok(Prompt::Ids(ids(&list, "prompt")?))
        } else if list.iter().all(Value::is_array) {
            let lists = list.iter().enumerate().map(|(i, x)| {
                let inner = x.as_array().map_or(&[][..], Vec::as_slice);
                ids(inner, &format!("prompt[{i}]"))
            });
            Ok(Prompt::IdLists(lists.collect::<Result<_, _>>()?))
        } else {
            Err(format!(
                "expected {}, got a list that mixes kinds",
                Self::FORMS
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Message content: a string, or a list of parts of which only text ones are understood.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The body of a completions or chat completions request.
#[derive(Debug, Deserialize, Default)]
pub struct Body {
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    pub messages: Option<Vec<ChatMessage>>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<Stop>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    /// Completions: an integer (alternatives per token); chat: a boolean.
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<i64>,
    pub seed: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    pub user: Option<String>,
    pub tools: Option<Value>,
    pub response_format: Option<Value>,
    // vLLM's extensions.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub no_repeat_ngram_size: Option<usize>,
    /// llama.cpp server's names: the penalty window (-1 = the whole context) and the order
    /// of the filter stages.
    pub repeat_last_n: Option<i64>,
    pub samplers: Option<Vec<String>>,
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub use_beam_search: bool,
    pub best_of: Option<i64>,
    pub length_penalty: Option<f32>,
    pub early_stopping: Option<Value>,
    #[serde(default = "yes")]
    pub skip_special_tokens: bool,
}

fn yes() -> bool {
    true
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message, Some(param))
}

/// Which endpoint a body came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

impl Body {
    /// The engine request for this body (the prompt is set by the caller). `fresh_seed`
    /// supplies a seed when the body has none.
    pub fn to_request(
        &self,
        kind: Kind,
        fresh_seed: u64,
    ) -> Result<(GenerateRequest, Option<usize>), ApiError> {
        let n = match self.n {
            None => 1,
            Some(n) if (1..=16).contains(&n) => n as usize,
            Some(n) => return Err(invalid("n", format!("n must be 1 to 16, got {n}"))),
        };
        let max_tokens = match (kind, self.max_completion_tokens.or(self.max_tokens)) {
            (_, Some(m)) if m >= 1 => Some(m as usize),
            (_, Some(m)) => {
                return Err(invalid(
                    "max_tokens",
                    format!("max_tokens must be at least 1, got {m}"),
                ))
            }
            // OpenAI's default for completions; chat runs to the end of the context.
            (Kind::Completion, None) => Some(16),
            (Kind::Chat, None) => None,
        };
        if self.suffix.is_some() {
            return Err(invalid("suffix", "suffix (insertion) is not supported"));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(invalid("tools", "tool calling is not supported"));
        }
        if let Some(f) = &self.response_format {
            if f.get("type").and_then(Value::as_str).unwrap_or("text") != "text" {
                return Err(invalid(
                    "response_format",
                    "only the text response format is supported",
                ));
            }
        }
        if !self.skip_special_tokens {
            return Err(invalid(
                "skip_special_tokens",
                "special tokens are always left out of the text",
            ));
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(invalid(
                    "top_k",
                    format!("top_k must be ≥ 1 or -1 (off), got {k}"),
                ))
            }
        };
        let mut logit_bias = Vec::new();
        for (k, &v) in self.logit_bias.iter().flatten() {
            let id: u32 = k.parse().map_err(|_| {
                invalid(
                    "logit_bias",
                    format!("logit_bias keys are token ids, got {k:?}"),
                )
            })?;
            if !(-100.0..=100.0).contains(&v) {
                return Err(invalid(
                    "logit_bias",
                    format!("logit_bias values are in [-100, 100], got {v} for {id}"),
                ));
            }
            logit_bias.push((id, v));
        }
        logit_bias.sort_by_key(|&(id, _)| id);
        let seed = match self.seed {
            Some(s) => s as u64,
            None => fresh_seed,
        };
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            typical_p: self.typical_p.unwrap_or(1.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            // The whole context, prompt and output, unless told otherwise.
            penalty_last_n: self.repeat_last_n.unwrap_or(-1),
            logit_bias,
            no_repeat_ngram_size: self.no_repeat_ngram_size.unwrap_or(0),
            // vLLM's order by default: temperature scales the logits before the filters (why
            // it differs from the command line's: `tuili_sample::OPENAI_ORDER`).
            order: match &self.samplers {
                None => OPENAI_ORDER.to_vec(),
                Some(names) => names
                    .iter()
                    .map(|n| Stage::parse(n))
                    .collect::<Result<_, _>>()
                    .map_err(|e| invalid("samplers", e.to_string()))?,
            },
            seed,
        };
        for (name, v) in [
            ("temperature", sampling.temperature),
            ("top_p", sampling.top_p),
            ("min_p", sampling.min_p),
            ("presence_penalty", sampling.presence_penalty),
            ("frequency_penalty", sampling.frequency_penalty),
        ] {
            if !v.is_finite() {
                return Err(invalid(name, format!("{name} must be a finite number")));
            }
        }
        if !(0.0..=2.0).contains(&sampling.temperature) {
            return Err(invalid(
                "temperature",
                format!(
                    "temperature must be in [0, 2], got {}",
                    sampling.temperature
                ),
            ));
        }
        for (name, v) in [
            ("presence_penalty", sampling.presence_penalty),
            ("frequency_penalty", sampling.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(invalid(name, format!("{name} must be in [-2, 2], got {v}")));
            }
        }
        let logprobs = match kind {
            Kind::Completion => {
                if self.top_logprobs.is_some() {
                    return Err(invalid(
                        "top_logprobs",
                        "top_logprobs is a chat parameter; completions take logprobs = N",
                    ));
                }
                match &self.logprobs {
                    None | Some(Value::Null) => None,
                    Some(v) => match v.as_i64() {
                        Some(k) if (0..=MAX_LOGPROBS as i64).contains(&k) => Some(k as usize),
                        _ => {
                            return Err(invalid(
                                "logprobs",
                                format!("logprobs must be an integer 0 to {MAX_LOGPROBS}, got {v}"),
                            ))
                        }
                    },
                }
            }
            Kind::Chat => {
                let on = match &self.logprobs {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(v) => {
                        return Err(invalid(
                            "logprobs",
                            format!("logprobs must be true or false, got {v}"),
                        ))
                    }
                };
                match self.top_logprobs {
                    Some(k) if !on => {
                        return Err(invalid(
                            "top_logprobs",
                            format!("top_logprobs = {k} needs logprobs = true"),
                        ))
                    }
                    Some(k) if !(0..=MAX_LOGPROBS as i64).contains(&k) => {
                        return Err(invalid(
                            "top_logprobs",
                            format!("top_logprobs must be 0 to {MAX_LOGPROBS}, got {k}"),
                        ))
                    }
                    Some(k) => Some(k as usize),
                    None => on.then_some(0),
                }
            }
        };
        if self.echo && kind == Kind::Completion && logprobs.is_some() {
            return Err(invalid(
                "echo",
                "echo together with logprobs (the prompt's log-probabilities) is not supported",
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 16 || stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "stop takes up to 16 non-empty strings"));
        }
        let best_of = match self.best_of {
            None => None,
            Some(b) if (1..=16).contains(&b) => Some(b as usize),
            Some(b) => {
                return Err(invalid(
                    "best_of",
                    format!("best_of must be 1 to 16, got {b}"),
                ))
            }
        };
        let beam = if self.use_beam_search {
            let early_stopping = match &self.early_stopping {
                None | Some(Value::Null) | Some(Value::Bool(false)) => EarlyStopping::False,
                Some(Value::Bool(true)) => EarlyStopping::True,
                Some(Value::String(s)) if s == "never" => EarlyStopping::Never,
                Some(v) => {
                    return Err(invalid(
                        "early_stopping",
                        format!("early_stopping is true, false or \"never\", got {v}"),
                    ))
                }
            };
            let num_beams = best_of.unwrap_or(n.max(2)).max(2);
            if num_beams < n {
                return Err(invalid(
                    "best_of",
                    format!("best_of ({num_beams}) must be at least n ({n})"),
                ));
            }
            Some(BeamParams {
                num_beams,
                length_penalty: self.length_penalty.unwrap_or(1.0),
                early_stopping,
            })
        } else {
            if best_of.is_some_and(|b| b != n) {
                return Err(invalid(
                    "best_of",
                    "best_of other than n needs use_beam_search (sampling best-of is not supported)",
                ));
            }
            if self.length_penalty.is_some() || self.early_stopping.is_some() {
                return Err(invalid(
                    if self.length_penalty.is_some() {
                        "length_penalty"
                    } else {
                        "early_stopping"
                    },
                    "length_penalty and early_stopping apply to use_beam_search only",
                ));
            }
            None
        };
        if beam.is_some() && self.stream {
            return Err(invalid("stream", "beam search does not stream"));
        }
        let mut req =
            GenerateRequest::new(String::new(), max_tokens.unwrap_or(usize::MAX), sampling);
        req.n = n;
        req.stop = stop;
        req.logprobs = logprobs;
        req.beam = beam;
        req.ignore_eos = self.ignore_eos;
        Ok((req, max_tokens))
    }
}

/// OpenAI's finish_reason.
pub fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::Eos | StopReason::StopString(_) => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        StopReason::Cancelled => "abort",
    }
}

/// A token as text (a leading space kept).
pub fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// Completions' logprobs object for a run of tokens; `offset` is the text offset of the
/// first.
pub fn completion_logprobs(tok: &Tokenizer, steps: &[StepLogprobs], mut offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offsets = Vec::new();
    for s in steps {
        let t = token_text(tok, s.chosen.token);
        offsets.push(offset);
        offset += t.chars().count();
        tokens.push(t);
        lps.push(s.chosen.logprob);
        let mut top = serde_json::Map::new();
        for a in &s.top {
            top.insert(token_text(tok, a.token), json!(a.logprob));
        }
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// Chat's logprobs object (`content` entries with bytes and alternatives).
pub fn chat_logprobs(tok: &Tokenizer, steps: &[StepLogprobs]) -> Value {
    let entry = |id: u32, lp: f32| {
        let t = token_text(tok, id);
        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
    };
    let content: Vec<Value> = steps
        .iter()
        .map(|s| {
            let mut e = entry(s.chosen.token, s.chosen.logprob);
            e["top_logprobs"] = s.top.iter().map(|a| entry(a.token, a.logprob)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}
