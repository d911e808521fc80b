//! Tensor parallelism's cut of a model (Megatron's): which part of every matrix a rank holds.
//!
//! Of `size` ranks, rank r holds
//! - whole KV-head groups: its KV heads and the query heads that share them (rows of Q, K, V
//!   and their biases), so its attention and KV cache are its own; with more ranks than KV
//!   heads, the last ranks hold none (no attention work, no KV cache: their share of the
//!   attention output's partial sum is zero) and still split the MLP and the vocabulary;
//! - a range of the MLP's hidden units: rows of gate and up, the same columns of down;
//! - the columns of the attention output matrix that its heads produce;
//! - a range of the vocabulary: rows of the output matrix.
//!
//! Attention output and MLP down then give partial sums of the residual update, added up by
//! one all-reduce each per layer; the logits are gathered. Splits are as even as whole units
//! allow (the first ranks one larger); a column cut must fall on a block boundary of the
//! matrix's type, and what cannot be cut so is refused with the reason.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::ops::Range;

use tuili_dist::Comm;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::weights::{Matrix, WeightInfo, WeightSource};

/// This process's place in a tensor-parallel group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub size: usize,
}

impl Shard {
    /// One process holding everything.
    pub const WHOLE: Shard = Shard { rank: 0, size: 1 };
}

/// Part `rank` of `n` units cut into `size` parts as evenly as possible (the first `n % size`
/// parts one unit larger).
pub fn part(n: usize, rank: usize, size: usize) -> Range<usize> {
    let (q, r) = (n / size, n % size);
    let start = rank * q + rank.min(r);
    start..start + q + usize::from(rank < r)
}

/// What rank `shard.rank` holds of a model of (full) configuration `cfg`, in units of the
/// config: KV heads, query heads, hidden units of the MLP, vocabulary rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub kv_heads: Range<usize>,
    pub q_heads: Range<usize>,
    pub ff: Range<usize>,
    pub vocab: Range<usize>,
}

impl Cut {
    /// The cut of rank `shard.rank`. `o` and `down` are every layer's attention output and
    /// MLP down matrices (their column cuts must fall on block boundaries of their types);
    /// `label` names the model in errors.
    pub fn new<'m>(
        cfg: &ModelConfig,
        shard: Shard,
        o: impl Iterator<Item = &'m Matrix>,
        down: impl Iterator<Item = &'m Matrix>,
        label: &str,
    ) -> Result<Cut, ModelError> {
        let block = |ms: &mut dyn Iterator<Item = &'m Matrix>| {
            ms.map(|m| m.dtype.block_len() as usize).max().unwrap_or(1)
        };
        let (o_block, down_block) = (block(&mut { o }), block(&mut { down }));
        let Shard { rank, size } = shard;
        let refuse = |reason: String| ModelError::Shard {
            path: label.to_string(),
            size,
            reason,
        };
        if size == 0 || rank >= size {
            return Err(refuse(format!("rank {rank} is outside the group")));
        }
        let group = cfg.n_head / cfg.n_head_kv;
        let kv_heads = part(cfg.n_head_kv, rank, size);
        let q_heads = kv_heads.start * group..kv_heads.end * group;
        // Every rank's columns of the attention output start and end on a block boundary.
        for r in 0..size {
            let h = part(cfg.n_head_kv, r, size);
            let (c0, c1) = (h.start * group * cfg.head_dim, h.end * group * cfg.head_dim);
            if !c0.is_multiple_of(o_block) || !c1.is_multiple_of(o_block) {
                return Err(refuse(format!(
                    "rank {r}'s attention heads are columns {c0}..{c1} of the attention output, \
                     which is stored in blocks of {o_block}: the cut would split a block"
                )));
            }
        }
        // The MLP's hidden units in whole blocks of down's columns.
        let blocks = cfg.n_ff / down_block;
        if !cfg.n_ff.is_multiple_of(down_block) || blocks < size {
            return Err(refuse(format!(
                "the MLP's {} hidden units are {} blocks of {down_block}: too few to give each of \
                 {size} ranks whole blocks",
                cfg.n_ff,
                cfg.n_ff / down_block
            )));
        }
        let b = part(blocks, rank, size);
        Ok(Cut {
            kv_heads,
            q_heads,
            ff: b.start * down_block..b.end * down_block,
            vocab: part(cfg.n_vocab, rank, size),
        })
    }

    /// This rank's rows of Q (its query heads), `head_dim` values each.
    pub fn q_rows(&self, head_dim: usize) -> Range<usize> {
        self.q_heads.start * head_dim..self.q_heads.end * head_dim
    }

    /// This rank's rows of K and V (its KV heads).
    pub fn kv_rows(&self, head_dim: usize) -> Range<usize> {
        self.kv_heads.start * head_dim..self.kv_heads.end * head_dim
    }

    /// The configuration this rank computes with: its own heads and hidden units (the vocabulary
    /// stays whole: the logits are gathered).
    pub fn local(&self, cfg: &ModelConfig) -> ModelConfig {
        ModelConfig {
            n_head: self.q_heads.len(),
            n_head_kv: self.kv_heads.len(),
            n_ff: self.ff.len(),
            ..cfg.clone()
        }
    }
}

/// Pipeline parallelism's cut: the layer range of each of `stages` stages. `split` gives the
/// layers per stage (`--layer-split`); without it the stages are balanced by bytes read per
/// token: every layer weighs `layer_bytes`, and the last stage also carries the output
/// matrix (`output_bytes`), so it gets fewer layers.
pub fn stage_layers(
    n_layer: usize,
    stages: usize,
    split: Option<&[usize]>,
    layer_bytes: usize,
    output_bytes: usize,
) -> Result<Vec<Range<usize>>, String> {
    if stages == 0 || stages > n_layer {
        return Err(format!(
            "{stages} pipeline stages for {n_layer} layers: each stage needs at least one layer"
        ));
    }
    let counts: Vec<usize> = match split {
        Some(c) => {
            if c.len() != stages || c.iter().sum::<usize>() != n_layer || c.contains(&0) {
                return Err(format!(
                    "--layer-split {}: give {stages} counts of at least 1 that add up to the \
                     model's {n_layer} layers",
                    c.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            c.to_vec()
        }
        None => {
            // Cut points at multiples of total/stages, the output counted in layers.
            let out = output_bytes as f64 / layer_bytes.max(1) as f64;
            let total = n_layer as f64 + out;
            let mut cuts = vec![0];
            for s in 1..stages {
                let want = (total * s as f64 / stages as f64).round() as usize;
                let lo = cuts[s - 1] + 1;
                cuts.push(want.clamp(lo, n_layer - (stages - s)));
            }
            cuts.push(n_layer);
            cuts.windows(2).map(|w| w[1] - w[0]).collect()
        }
    };
    let mut start = 0;
    Ok(counts
        .iter()
        .map(|&c| {
            start += c;
            start - c..start
        })
        .collect())
}

/// A weight source that also fingerprints what is bound from it: every tensor's name, type,
/// shape and first and last bytes (two pages touched per tensor, not the whole file), in the
/// order the architecture asks for them — which is the same on every rank.
pub struct Fingerprint<'a> {
    inner: &'a dyn WeightSource,
    hash: RefCell<DefaultHasher>,
}

impl<'a> Fingerprint<'a> {
    pub fn new(inner: &'a dyn WeightSource, cfg: &ModelConfig) -> Fingerprint<'a> {
        let mut h = DefaultHasher::new();
        format!("{cfg:?}").hash(&mut h);
        Fingerprint {
            inner,
            hash: RefCell::new(h),
        }
    }

    pub fn value(&self) -> u64 {
        self.hash.borrow().finish()
    }
}

impl WeightSource for Fingerprint<'_> {
    fn label(&self) -> String {
        self.inner.label()
    }

    fn get(&self, name: &str) -> Option<WeightInfo> {
        let w = self.inner.get(name);
        let h = &mut *self.hash.borrow_mut();
        name.hash(h);
        if let Some(w) = &w {
            (w.dtype as u32, &w.shape).hash(h);
            let bytes = &w.backing.bytes()[w.range.clone()];
            let n = bytes.len().min(64);
            (&bytes[..n], &bytes[bytes.len() - n..]).hash(h);
        }
        w
    }

    fn norm_offset(&self) -> f32 {
        self.inner.norm_offset()
    }
}

/// Checks that every rank of `comm` bound the same model (`fingerprint`, from
/// [`Fingerprint`]): each rank learns every rank's, so a mismatch fails on all of them.
pub fn check_same_model(comm: &dyn Comm, fingerprint: u64, label: &str) -> Result<(), ModelError> {
    // As four 16-bit pieces, each exact in an f32.
    let mine: Vec<f32> = (0..4)
        .map(|i| ((fingerprint >> (16 * i)) & 0xffff) as f32)
        .collect();
    let mut all = vec![0f32; 4 * comm.size()];
    comm.all_gather(&mine, &mut all)?;
    match all.chunks_exact(4).position(|r| r != &all[..4]) {
        Some(rank) => Err(ModelError::NotSameModel {
            path: label.to_string(),
            rank,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_balance_bytes_and_take_a_given_split() {
        // 22 equal layers and an output of 1.5 layers over 2 stages: 12 + 10.
        let r = stage_layers(22, 2, None, 100, 150).unwrap();
        assert_eq!(r, vec![0..12, 12..22]);
        // Every stage gets a layer, however large the output.
        let r = stage_layers(3, 3, None, 1, 1000).unwrap();
        assert_eq!(r, vec![0..1, 1..2, 2..3]);
        assert_eq!(
            stage_layers(5, 2, Some(&[1, 4]), 1, 1).unwrap(),
            vec![0..1, 1..5]
        );
        assert!(stage_layers(5, 2, Some(&[2, 2]), 1, 1).is_err());
        assert!(stage_layers(5, 2, Some(&[0, 5]), 1, 1).is_err());
        assert!(stage_layers(2, 3, None, 1, 1).is_err());
    }

    #[test]
    fn parts_cover_evenly() {
        for n in [1, 7, 32000, 172] {
            for size in 1..=5.min(n) {
                let parts: Vec<_> = (0..size).map(|r| part(n, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
    }
}
