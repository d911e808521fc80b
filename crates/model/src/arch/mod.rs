//! The architectures tuili runs: one registry line each ([`ARCHITECTURES`]), each naming its
//! GGUF and Hugging Face identities, the traits its layer has ([`Arch`]) and the decoder that
//! runs it (its file binds the tensors, describes the layer for the execution layer, and
//! reads its Hugging Face `config.json`).
//!
//! Adding an architecture:
//! - a member of the Llama family (RMSNorm, RoPE, gated MLP) is one line here: its names and
//!   the [`Arch`] traits it sets (a new trait is a field of [`Arch`] and the few lines of
//!   `llama.rs` that read it);
//! - a new decoder is one file beside `llama.rs` and `gpt2.rs` — `bind` (tensors by GGUF
//!   name → a [`Decoder`]), `hf_config`, `hf_source` and `hf_to_gguf` (its Hugging Face
//!   `config.json`, tensor names and GGUF conversion) — plus its line here.

pub mod gpt2;
pub mod llama;

use std::path::Path;

use serde_json::Value;
use tuili_formats::{GgufFile, Safetensors};
use tuili_kernels::ops::RopeLayout;

use crate::config::{Arch, Family, ModelConfig};
use crate::error::ModelError;
use crate::exec::Decoder;
use crate::hf::{self, HfExtras};
use crate::quantize::QuantInput;
use crate::shard::Shard;
use crate::weights::WeightSource;

/// Binds a model's tensors (GGUF names) into its decoder: the whole model, or a
/// tensor-parallel rank's part of it ([`crate::shard`]).
pub type BindFn = fn(ModelConfig, &dyn WeightSource, Shard) -> Result<Box<dyn Decoder>, ModelError>;
/// Reads a Hugging Face `config.json` (the folder, the parsed file) of an architecture.
pub type HfConfigFn = fn(&Path, &Value, Arch) -> Result<(ModelConfig, HfExtras), ModelError>;
/// Presents a Hugging Face checkpoint's tensors under GGUF names.
pub type HfSourceFn = fn(Safetensors, &ModelConfig, &HfExtras) -> Box<dyn WeightSource>;
/// A Hugging Face folder as a GGUF to be written (keys and tensors, as llama.cpp's converter
/// lays them out).
pub type HfToGgufFn = for<'a> fn(
    &Path,
    &'a Safetensors,
    &ModelConfig,
    &HfExtras,
) -> Result<QuantInput<'a>, ModelError>;

/// One supported architecture.
pub struct Architecture {
    /// Its name (`general.architecture` in GGUF) and layer traits.
    pub arch: Arch,
    /// `model_type` values of Hugging Face `config.json` files that map to it.
    pub hf_types: &'static [&'static str],
    pub bind: BindFn,
    pub hf_config: HfConfigFn,
    pub hf_source: HfSourceFn,
    pub hf_to_gguf: HfToGgufFn,
}

/// A Llama-family registry line: `arch` read by `llama.rs`.
const fn llama_like(arch: Arch, hf_types: &'static [&'static str]) -> Architecture {
    Architecture {
        arch,
        hf_types,
        bind: llama::bind,
        hf_config: llama::hf_config,
        hf_source: llama::hf_source,
        hf_to_gguf: llama::hf_to_gguf,
    }
}

const LLAMA: Arch = Arch::LLAMA;
const NEOX: RopeLayout = RopeLayout::NeoX;

/// Every architecture tuili runs, one line each.
#[rustfmt::skip]
pub static ARCHITECTURES: &[Architecture] = &[
    llama_like(LLAMA, &["llama", "mistral"]),
    llama_like(Arch { name: "qwen2", rope_layout: NEOX, ..LLAMA }, &["qwen2"]),
    llama_like(Arch { name: "qwen3", rope_layout: NEOX, qk_norm: true, ..LLAMA }, &["qwen3"]),
    llama_like(Arch { name: "phi3", rope_layout: NEOX, ..LLAMA }, &["phi3"]),
    llama_like(Arch { name: "gemma", rope_layout: NEOX, gemma: true, ..LLAMA }, &["gemma"]),
    llama_like(Arch { name: "gemma2", rope_layout: NEOX, gemma: true, sandwich: true, ..LLAMA }, &["gemma2"]),
    Architecture {
        arch: Arch { name: "gpt2", family: Family::Gpt2, rope_layout: NEOX, ..LLAMA },
        hf_types: &["gpt2"], bind: gpt2::bind, hf_config: gpt2::hf_config, hf_source: gpt2::hf_source,
        hf_to_gguf: gpt2::hf_to_gguf,
    },
];

/// The names the registry knows, for error messages.
fn known() -> String {
    let names: Vec<&str> = ARCHITECTURES
        .iter()
        .flat_map(|a| std::iter::once(a.arch.name).chain(a.hf_types.iter().copied()))
        .fold(Vec::new(), |mut v, n| {
            if !v.contains(&n) {
                v.push(n);
            }
            v
        });
    names.join(", ")
}

/// The architecture of a GGUF file (`general.architecture`).
pub fn of_gguf(file: &GgufFile) -> Result<&'static Architecture, ModelError> {
    let name = file.require_str("general.architecture")?;
    ARCHITECTURES
        .iter()
        .find(|a| a.arch.name == name)
        .ok_or_else(|| ModelError::UnsupportedArch {
            path: file.path().display().to_string(),
            arch: name.to_string(),
            known: known(),
        })
}

/// The architecture, configuration and extras of a Hugging Face folder (`config.json`'s
/// `model_type`, then the architecture's own reader, then what every folder says alike).
pub fn of_hf(dir: &Path) -> Result<(&'static Architecture, ModelConfig, HfExtras), ModelError> {
    let c = hf::read_config(dir)?;
    let model_type = c["model_type"].as_str().unwrap_or("");
    let a = ARCHITECTURES
        .iter()
        .find(|a| a.hf_types.contains(&model_type))
        .ok_or_else(|| ModelError::UnsupportedArch {
            path: dir.join("config.json").display().to_string(),
            arch: model_type.to_string(),
            known: known(),
        })?;
    let (cfg, mut extras) = (a.hf_config)(dir, &c, a.arch)?;
    hf::read_common(dir, &c, &mut extras)?;
    Ok((a, cfg, extras))
}

/// A Hugging Face folder as quantizer input: its architecture's conversion (tensors borrowed
/// from `st`'s maps where they are not transformed).
pub fn hf_input<'a>(dir: &Path, st: &'a Safetensors) -> Result<QuantInput<'a>, ModelError> {
    let (a, cfg, extras) = of_hf(dir)?;
    (a.hf_to_gguf)(dir, st, &cfg, &extras)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, a) in ARCHITECTURES.iter().enumerate() {
            for b in &ARCHITECTURES[i + 1..] {
                assert_ne!(a.arch.name, b.arch.name);
                assert!(a.hf_types.iter().all(|t| !b.hf_types.contains(t)));
            }
        }
    }
}
