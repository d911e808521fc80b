//! `tokenizer_config.json`, read once for everyone who needs it (the tokenizer built from a
//! `tokenizer.json`, and the Hugging Face → GGUF converter): the special tokens' texts,
//! whether BOS and EOS are added, and the chat template.

use std::path::Path;

use serde_json::Value;

/// What a folder's `tokenizer_config.json` says; every field `None` when the file is missing
/// or unreadable (a folder may ship only `tokenizer.json`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    /// The chat template: a string, or of a list of named templates the one named
    /// "default", else the first.
    pub chat_template: Option<String>,
}

impl TokenizerConfig {
    /// Reads `path` (a `tokenizer_config.json`).
    pub fn read(path: &Path) -> TokenizerConfig {
        let cfg: Value = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        // A token is a string, or an object with its `content` (AddedToken).
        let token = |key: &str| -> Option<String> {
            let v = &cfg[key];
            v.as_str()
                .or_else(|| v["content"].as_str())
                .map(String::from)
        };
        let chat_template = match &cfg["chat_template"] {
            Value::String(s) => Some(s.clone()),
            Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .or_else(|| list.first())
                .and_then(|t| t["template"].as_str())
                .map(String::from),
            _ => None,
        };
        TokenizerConfig {
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            unk_token: token("unk_token"),
            pad_token: token("pad_token"),
            add_bos_token: cfg["add_bos_token"].as_bool(),
            add_eos_token: cfg["add_eos_token"].as_bool(),
            chat_template,
        }
    }
}
