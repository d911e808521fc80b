//! What a calibration run records about the inputs of the matrices being pruned: for Wanda
//! each input column's sum of squares (‖X_j‖₂²), for SparseGPT the Gram matrix Σ x·xᵀ (its
//! Hessian up to a factor). One record per input: matrices that read the same rows (Q, K and
//! V; gate and up) share it.
//!
//! May not: prune, or run the model (it is shown the inputs by the execution layer).

use std::collections::HashMap;

use crate::exec::Observe;
use crate::weights::Matrix;

/// Which statistics a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Σ_t x_tj² per column j.
    Norms,
    /// Σ_t x_t·x_tᵀ, `[cols, cols]` (and the norms, its diagonal).
    Gram,
}

/// One input's statistics.
#[derive(Debug, Clone)]
pub struct InputStats {
    pub cols: usize,
    /// Rows (tokens) seen.
    pub tokens: usize,
    /// Σ_t x_tj², `[cols]`.
    pub sumsq: Vec<f64>,
    /// Σ_t x_t·x_tᵀ, `[cols, cols]` (empty unless [`Need::Gram`]); only its lower triangle
    /// is summed while recording ([`Recorder::finish`] mirrors it).
    pub gram: Vec<f64>,
}

/// Records the inputs of the matrices named in `targets` as a forward pass shows them.
pub struct Recorder {
    need: Need,
    targets: Vec<String>,
    by_name: HashMap<String, usize>,
    inputs: Vec<InputStats>,
}

impl Recorder {
    pub fn new(need: Need, targets: Vec<String>) -> Recorder {
        Recorder {
            need,
            targets,
            by_name: HashMap::new(),
            inputs: Vec::new(),
        }
    }

    /// The statistics by matrix name (Gram matrices made whole).
    pub fn finish(mut self) -> HashMap<String, InputStats> {
        for s in &mut self.inputs {
            let n = s.cols;
            for i in 0..s.gram.len() / n.max(1) {
                for j in 0..i {
                    s.gram[j * n + i] = s.gram[i * n + j];
                }
            }
        }
        self.by_name
            .into_iter()
            .map(|(k, i)| (k, self.inputs[i].clone()))
            .collect()
    }
}

impl Observe for Recorder {
    fn input(&mut self, ws: &[&Matrix], x: &[f32], n: usize) {
        // A fused matrix's row blocks (GPT-2's and Phi-3's Q/K/V) are views named
        // `name[a..b]`: they record under the tensor's own name.
        let mine: Vec<&str> = ws
            .iter()
            .map(|w| w.name.split_once('[').map_or(w.name.as_str(), |(n, _)| n))
            .filter(|name| self.targets.iter().any(|t| t == name))
            .collect();
        let Some(first) = mine.first() else {
            return;
        };
        let cols = ws[0].cols;
        let i = match self.by_name.get(*first) {
            Some(&i) => i,
            None => {
                self.inputs.push(InputStats {
                    cols,
                    tokens: 0,
                    sumsq: vec![0.0; cols],
                    gram: if self.need == Need::Gram {
                        vec![0.0; cols * cols]
                    } else {
                        Vec::new()
                    },
                });
                self.inputs.len() - 1
            }
        };
        for name in mine {
            self.by_name.entry(name.to_string()).or_insert(i);
        }
        let s = &mut self.inputs[i];
        s.tokens += n;
        for row in x[..n * cols].chunks_exact(cols) {
            for (a, &v) in s.sumsq.iter_mut().zip(row) {
                *a += v as f64 * v as f64;
            }
            if !s.gram.is_empty() {
                // The lower triangle, row by row.
                for (r, &xr) in row.iter().enumerate() {
                    let xr = xr as f64;
                    if xr == 0.0 {
                        continue;
                    }
                    let g = &mut s.gram[r * cols..r * cols + r + 1];
                    for (a, &xc) in g.iter_mut().zip(&row[..=r]) {
                        *a += xr * xc as f64;
                    }
                }
            }
        }
    }
}
