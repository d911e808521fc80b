//! Pruning: removing the weights that matter least from a model's attention and MLP
//! projections, as the papers do.
//!
//! - **magnitude**: the weights of smallest |W_ij| in each row (the baseline);
//! - **Wanda** (Sun et al., 2023): score |W_ij|·‖X_j‖₂, where ‖X_j‖₂ is the norm of input
//!   feature j over the calibration tokens, compared within each output row;
//! - **SparseGPT** (Frantar & Alistarh, 2023): a layer-wise reconstruction that also updates
//!   the weights it keeps ([`sparsegpt`]).
//!
//! The calibration methods run the model layer by layer, as both papers do: layer i's inputs
//! are recorded with layers 0 … i − 1 already pruned (the model is rebound over the pruned
//! values, [`crate::weights::Replaced`], and cut after layer i), then all of layer i's
//! matrices are pruned from those inputs. Embeddings, norms and the output projection stay
//! dense. The pruned values come back as F32; writing them (and quantizing them, zeros
//! staying zero where the type has an exact zero) is the caller's, through
//! [`crate::quantize::write`].
//!
//! May not: tokenize (the caller gives the calibration tokens) or write files.

pub mod calib;
pub mod mask;
pub mod sparsegpt;

use std::collections::HashMap;
use std::sync::Arc;

use tuili_core::{DType, ThreadPool};
use tuili_formats::GgufFile;
use tuili_kernels::types::dequantize_row;

use crate::error::ModelError;
use crate::exec::Scratch;
use crate::model::Model;
use crate::weights::Replaced;
use calib::{Need, Recorder};
pub use mask::Pattern;

/// How weights are chosen for removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Magnitude,
    Wanda,
    SparseGpt,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Magnitude, Method::Wanda, Method::SparseGpt];

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::SparseGpt => "sparsegpt",
        }
    }

    /// What the method records from calibration text (`None`: it needs none).
    pub fn needs(self) -> Option<Need> {
        match self {
            Method::Magnitude => None,
            Method::Wanda => Some(Need::Norms),
            Method::SparseGpt => Some(Need::Gram),
        }
    }
}

/// What to prune, and how.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub method: Method,
    pub pattern: Pattern,
    /// Tensors whose names contain any of these stay dense.
    pub skip: Vec<String>,
}

/// The pruned tensors' values by name: little-endian F32 bytes, in the tensor's shape.
pub type PrunedValues = HashMap<String, Arc<Vec<u8>>>;

/// The sparse layout of a matrix of `cols` columns pruned to `pattern` whose dense type would
/// be `dense`, where tuili has one, for rows of whole 128-weight super-blocks: Q8_0 and Q4_0
/// pruned 2:4 (positions in 3 bits a group) or 4:8 (a keep-mask); Q8_0 pruned unstructured,
/// keep-masks and a pool per row with room for `most_kept` (the most any row keeps:
/// `Q8_0_U*`), where that is smaller than Q8_0 (at most 104 of every 128 kept).
pub fn sparse_layout(dense: DType, pattern: Pattern, cols: u64, most_kept: u64) -> Option<DType> {
    let layout = match (dense, pattern) {
        (DType::Q8_0, Pattern::NofM { n: 2, m: 4 }) => DType::Q8_0_24,
        (DType::Q4_0, Pattern::NofM { n: 2, m: 4 }) => DType::Q4_0_24,
        (DType::Q8_0, Pattern::NofM { n: 4, m: 8 }) => DType::Q8_0_48,
        (DType::Q4_0, Pattern::NofM { n: 4, m: 8 }) => DType::Q4_0_48,
        (DType::Q8_0, Pattern::Unstructured(_)) => DType::q8_0_pooled(cols, most_kept)?,
        _ => return None,
    };
    // Only where it is smaller than the dense type (an unstructured row keeping more than
    // 104 of 128 is not).
    let smaller = layout.bytes_for(cols).ok()? < dense.bytes_for(cols).ok()?;
    (cols.is_multiple_of(layout.block_len()) && smaller).then_some(layout)
}

/// The most non-zero values any row of a matrix (`cols` columns, little-endian F32 bytes as
/// [`PrunedValues`] holds them) keeps.
pub fn most_kept(values: &[u8], cols: usize) -> u64 {
    values
        .chunks_exact(4 * cols.max(1))
        .map(|row| {
            row.chunks_exact(4)
                .filter(|v| f32::from_le_bytes([v[0], v[1], v[2], v[3]]) != 0.0)
                .count()
        })
        .max()
        .unwrap_or(0) as u64
}

/// One pruned matrix.
#[derive(Debug, Clone)]
pub struct Pruned {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// Weights that are zero after pruning (those it removed, and any that were zero).
    pub zeros: usize,
}

/// The layer of a tensor named `blk.{i}.…`.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Whether a tensor is one of a layer's attention or MLP projections (2-D `…weight` named
/// `blk.{i}.attn_*` or `blk.{i}.ffn_*`, norms aside).
pub fn is_prunable(name: &str, shape: &[u64]) -> bool {
    let Some(rest) = name.strip_prefix("blk.") else {
        return false;
    };
    let Some((_, kind)) = rest.split_once('.') else {
        return false;
    };
    let matrix = shape.len() >= 2 && shape[1] > 1 && shape[2..].iter().all(|&d| d == 1);
    matrix
        && kind.ends_with(".weight")
        && (kind.starts_with("attn_") || kind.starts_with("ffn_"))
        && !kind.contains("norm")
}

/// The tensors [`prune`] would prune, in file order.
pub fn targets(file: &GgufFile, opts: &PruneOptions) -> Vec<String> {
    let mut out = Vec::new();
    for t in &file.tensors {
        if !is_prunable(&t.name, &t.shape) || opts.skip.iter().any(|s| t.name.contains(s)) {
            continue;
        }
        out.push(t.name.clone());
    }
    out
}

fn prune_err(tensor: &str, reason: impl ToString) -> ModelError {
    ModelError::Prune {
        tensor: tensor.to_string(),
        reason: reason.to_string(),
    }
}

/// The tensor's values as f32, `[rows, cols]`.
fn dequantized(file: &GgufFile, name: &str) -> Result<(Vec<f32>, usize, usize), ModelError> {
    let info = file
        .tensor_info(name)
        .ok_or_else(|| prune_err(name, "not in the file"))?;
    let cols = info.shape[0] as usize;
    let rows = (info.shape.iter().product::<u64>() / info.shape[0]) as usize;
    let data = &file.bytes()[file.tensor_range(info)];
    let row_bytes = data.len() / rows.max(1);
    let mut w = vec![0f32; rows * cols];
    for (r, out) in w.chunks_exact_mut(cols).enumerate() {
        dequantize_row(info.dtype, &data[r * row_bytes..(r + 1) * row_bytes], out)?;
    }
    Ok((w, rows, cols))
}

/// Magnitude and Wanda: in each row of `w` (`[rows, cols]`), the weights of lowest
/// |W_ij|·norm_j set to zero as `pattern` says (norm: 1 for magnitude, ‖X_j‖₂ for Wanda).
pub fn by_score(w: &mut [f32], cols: usize, norm: &[f32], pattern: Pattern) {
    let (mut score, mut pruned, mut idx) = (vec![0f32; cols], vec![false; cols], Vec::new());
    for row in w.chunks_exact_mut(cols) {
        for ((s, &v), &n) in score.iter_mut().zip(row.iter()).zip(norm) {
            *s = v.abs() * n;
        }
        mask::choose_row(&score, pattern, &mut pruned, &mut idx);
        for (v, &p) in row.iter_mut().zip(&pruned) {
            if p {
                *v = 0.0;
            }
        }
    }
}

/// Prunes `file`'s projections layer by layer as `opts` says; `calib`: the calibration
/// sequences (token ids, each at most the model's context), needed by Wanda and SparseGPT.
/// `on_layer(i, n)` is called as layer i of n starts. Returns the pruned tensors' values
/// (little-endian F32 bytes, by name) and what was done to each.
pub fn prune(
    file: &Arc<GgufFile>,
    opts: &PruneOptions,
    calib: &[Vec<u32>],
    pool: &ThreadPool,
    on_layer: &mut dyn FnMut(usize, usize),
) -> Result<(PrunedValues, Vec<Pruned>), ModelError> {
    let names = targets(file, opts);
    let need = opts.method.needs();
    if need.is_some() && calib.is_empty() {
        return Err(prune_err(
            names.first().map_or("", |s| s.as_str()),
            format!("{} needs calibration text (--calib)", opts.method.name()),
        ));
    }
    let n_layer = names
        .iter()
        .filter_map(|n| layer_of(n))
        .max()
        .map_or(0, |l| l + 1);
    let mut done = PrunedValues::new();
    let mut report = Vec::new();
    for layer in 0..n_layer {
        on_layer(layer, n_layer);
        let mine: Vec<String> = names
            .iter()
            .filter(|n| layer_of(n) == Some(layer))
            .cloned()
            .collect();
        if mine.is_empty() {
            continue;
        }
        let stats = match need {
            None => HashMap::new(),
            Some(need) => {
                // The model as pruned so far, up to this layer.
                let mut model = Model::load_from(
                    file,
                    &Replaced {
                        file: file.clone(),
                        tensors: &done,
                    },
                )?;
                model.keep_first_layers(layer + 1);
                let mut rec = Recorder::new(need, mine.clone());
                let mut scratch = Scratch::new();
                for seq in calib {
                    let mut kv = model.new_cache(seq.len())?;
                    model.observe(seq, &mut kv, &mut scratch, &mut rec, pool)?;
                }
                rec.finish()
            }
        };
        for name in mine {
            let (mut w, rows, cols) = dequantized(file, &name)?;
            match opts.method {
                Method::Magnitude | Method::Wanda => {
                    let norm: Vec<f32> = match stats.get(&name) {
                        Some(s) => s.sumsq.iter().map(|&v| v.sqrt() as f32).collect(),
                        None if opts.method == Method::Magnitude => vec![1.0; cols],
                        None => {
                            return Err(prune_err(&name, "the calibration run never reached it"))
                        }
                    };
                    by_score(&mut w, cols, &norm, opts.pattern);
                }
                Method::SparseGpt => {
                    let s = stats
                        .get(&name)
                        .ok_or_else(|| prune_err(&name, "the calibration run never reached it"))?;
                    let scale = 2.0 / s.tokens.max(1) as f64;
                    let mut h: Vec<f64> = s.gram.iter().map(|&v| v * scale).collect();
                    sparsegpt::prune(&mut w, rows, cols, &mut h, opts.pattern, sparsegpt::BLOCK)
                        .map_err(|sparsegpt::SolveError::NotPositive(j)| {
                            prune_err(
                                &name,
                                format!(
                                    "its inputs' Hessian is not positive definite at column {j} even after dampening (too little calibration text?)"
                                ),
                            )
                        })?;
                }
            }
            let zeros = w.iter().filter(|&&v| v == 0.0).count();
            report.push(Pruned {
                name: name.clone(),
                rows,
                cols,
                zeros,
            });
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            done.insert(name, Arc::new(bytes));
        }
    }
    Ok((done, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projections_are_prunable_the_rest_is_not() {
        let m = [64u64, 128];
        for n in [
            "blk.0.attn_q.weight",
            "blk.3.attn_output.weight",
            "blk.1.attn_qkv.weight",
            "blk.11.ffn_down.weight",
            "blk.0.ffn_gate.weight",
        ] {
            assert!(is_prunable(n, &m), "{n}");
        }
        for (n, s) in [
            ("blk.0.attn_norm.weight", &m[..]),
            ("blk.0.attn_q.bias", &m[..]),
            ("blk.0.attn_q.weight", &[64u64][..]),
            ("token_embd.weight", &m[..]),
            ("output.weight", &m[..]),
            ("blk.0.ffn_norm.weight", &[64u64, 1][..]),
        ] {
            assert!(!is_prunable(n, s), "{n}");
        }
        assert_eq!(layer_of("blk.12.ffn_up.weight"), Some(12));
        assert_eq!(layer_of("output.weight"), None);
    }
}
