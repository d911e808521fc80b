//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template` in GGUF,
//! `chat_template` in tokenizer_config.json) rendered with minijinja, with Python string
//! methods (`.strip()`, `.startswith()` …) as Hugging Face's Jinja environment has them, and
//! its globals: `messages`, `add_generation_prompt`, `bos_token`, `eos_token`,
//! `raise_exception`, `strftime_now`.

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::error::TokenizerError;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// ChatML, for models without a template of their own (`--chat-template chatml`).
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(fmt: String) -> String {
    // Days since the epoch → civil date (UTC); only the date formats templates use.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    fmt.replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", MONTHS[(m - 1) as usize])
        .replace("%b", &MONTHS[(m - 1) as usize][..3])
}

/// Instructions a template may run per rendering (a chat template spends tens per message).
pub const TEMPLATE_FUEL: u64 = 2_000_000;

/// Bytes a rendering may produce (four times the server's default body limit).
pub const TEMPLATE_OUTPUT: usize = 32 << 20;

/// A `String` writer that fails past [`TEMPLATE_OUTPUT`] bytes, ending the rendering.
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + b.len() > TEMPLATE_OUTPUT {
            return Err(std::io::Error::other(format!(
                "the chat template's output passed {TEMPLATE_OUTPUT} bytes"
            )));
        }
        self.0.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos` and `eos` are the token texts the template may use.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, TokenizerError> {
        let mut env = Environment::new();
        // A template comes with the model file, from anywhere: its loops get a budget of
        // instructions (real chat templates use thousands per message), so a hostile one
        // ends with an error instead of running for ever or filling memory.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TokenizerError::Template {
                reason: e.to_string(),
            })?;
        Ok(ChatTemplate {
            env,
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// Renders a conversation; `add_generation_prompt` appends the opening of the assistant's
    /// turn.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| TokenizerError::Template {
                reason: e.to_string(),
            })?;
        let mut out = Bounded(Vec::new());
        t.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos,
                eos_token => &self.eos,
            },
            &mut out,
        )
        .map_err(|e| TokenizerError::Template {
            reason: e.to_string(),
        })?;
        // Rendered from `str` pieces only, so valid UTF-8; lossy all the same.
        Ok(String::from_utf8(out.0)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile templates: endless loops, huge outputs and deep recursion end with an error,
    /// quickly, instead of hanging or exhausting memory.
    #[test]
    fn hostile_templates_are_bounded() {
        let msgs = [Message::new("user", "hi")];
        for src in [
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            "{% for a in range(100000) %}{% for b in range(100000) %}{{ messages[0].content * 1000 }}{% endfor %}{% endfor %}",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        ] {
            let t0 = std::time::Instant::now();
            let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
            let r = t.render(&msgs, true);
            assert!(r.is_err(), "{src}");
            assert!(t0.elapsed() < std::time::Duration::from_secs(5), "{src}: {:?}", t0.elapsed());
        }
        // A long but honest conversation still renders.
        let long: Vec<Message> = (0..2000)
            .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "some words"))
            .collect();
        let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.strip() }}<|im_end|>\n{% endfor %}";
        assert!(ChatTemplate::new(chatml, "", "")
            .unwrap()
            .render(&long, false)
            .is_ok());
    }

    #[test]
    fn renders_common_templates() {
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", "  Hi!  "),
        ];
        // ChatML (Qwen2), with a Python string method.
        let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.strip() }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(chatml, "", "<|im_end|>").unwrap();
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
        // Llama 3 style: bos_token, trim filter, loop.first.
        let llama3 = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
        let t = ChatTemplate::new(llama3, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        assert_eq!(
            t.render(&msgs[1..], false).unwrap(),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        );
        // raise_exception surfaces as an error, not a panic.
        let strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}ok";
        let t = ChatTemplate::new(strict, "", "").unwrap();
        assert!(t
            .render(&msgs, false)
            .unwrap_err()
            .to_string()
            .contains("alternate"));
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
        let d = strftime_now("%d %B %Y".into());
        assert!(d.len() >= 10 && d.contains("20"));
    }
}
