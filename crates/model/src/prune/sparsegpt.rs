//! SparseGPT (Frantar & Alistarh, 2023): prune a linear layer and update the weights it keeps
//! so that its outputs on the calibration inputs change as little as possible.
//!
//! For a layer y = W·x with inputs X (`[cols, tokens]`), the loss of a row w is
//! ‖(w − ŵ)·X‖², whose Hessian is H = 2·X·Xᵀ (the same for every row). Removing weight j of a
//! row and updating the weights after it optimally (OBS) costs w_j² / [H⁻¹]_jj and moves the
//! others by −(w_j / [H⁻¹]_jj)·H⁻¹_{j,:}. SparseGPT visits the columns left to right, and for
//! the columns still ahead only needs the rows of the upper Cholesky factor U of H⁻¹
//! (H⁻¹ = Uᵀ·U): after column j is fixed, U_{j,j:} is the row that spreads its error. Columns
//! go in blocks of `block` (128 in the paper): within a block the update is applied at once
//! to the block's columns; the block's errors update the columns after it in one product
//! (the "lazy batch" update). The mask is chosen per block of columns for unstructured
//! sparsity (score w² / U_jj², the `s` lowest of the block), and per group of M columns as the
//! visit reaches it for N:M — both from the weights as updated so far.
//!
//! Dampening: λ = 1 % of H's mean diagonal added to the diagonal (the paper's `percdamp`);
//! inputs that were always zero (H_jj = 0) get H_jj = 1 and their weights set to 0.
//!
//! May not: read files or run the model (the Hessian comes from `super::calib`).

use super::mask::{count_of, smallest, Pattern};

/// The fraction of H's mean diagonal added to its diagonal.
pub const DAMP: f64 = 0.01;
/// Columns per lazy-update block.
pub const BLOCK: usize = 128;

/// The lower Cholesky factor of `a` (`[n, n]`, symmetric positive definite) in place, upper
/// triangle zeroed; `Err(j)` when the pivot of column j is not positive.
pub fn cholesky(a: &mut [f64], n: usize) -> Result<(), usize> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d.is_nan() || d <= 0.0 {
            return Err(j);
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
        for k in j + 1..n {
            a[j * n + k] = 0.0;
        }
    }
    Ok(())
}

/// H⁻¹ from H's lower Cholesky factor `l` (H = L·Lᵀ): H⁻¹ = L⁻ᵀ·L⁻¹.
fn inverse_from_cholesky(l: &[f64], n: usize) -> Vec<f64> {
    // M = L⁻¹ (lower triangular), by forward substitution column by column.
    let mut m = vec![0.0; n * n];
    for c in 0..n {
        m[c * n + c] = 1.0 / l[c * n + c];
        for i in c + 1..n {
            let mut s = 0.0;
            for k in c..i {
                s += l[i * n + k] * m[k * n + c];
            }
            m[i * n + c] = -s / l[i * n + i];
        }
    }
    // H⁻¹_ij = Σ_k M_ki·M_kj over k ≥ max(i, j).
    let mut inv = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = 0.0;
            for k in i..n {
                s += m[k * n + i] * m[k * n + j];
            }
            inv[i * n + j] = s;
            inv[j * n + i] = s;
        }
    }
    inv
}

/// Why SparseGPT could not run on a layer.
#[derive(Debug, PartialEq)]
pub enum SolveError {
    /// H + λI was not positive definite at this column (inputs too few or degenerate).
    NotPositive(usize),
}

/// Prunes `w` (`[rows, cols]`, row-major) to `pattern` with SparseGPT's updates, given the
/// Hessian `h` (`[cols, cols]`, 2/n · Σ x·xᵀ over the n calibration inputs, scaled as the
/// reference code scales it: the dampening is relative, but the 1 given to dead inputs is
/// not). `h` is consumed as scratch.
pub fn prune(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    h: &mut [f64],
    pattern: Pattern,
    block: usize,
) -> Result<(), SolveError> {
    debug_assert_eq!(w.len(), rows * cols);
    debug_assert_eq!(h.len(), cols * cols);
    // Inputs that never fired: their weights cannot matter; keep H invertible.
    for j in 0..cols {
        if h[j * cols + j] == 0.0 {
            h[j * cols + j] = 1.0;
            for r in 0..rows {
                w[r * cols + j] = 0.0;
            }
        }
    }
    let mean = (0..cols).map(|j| h[j * cols + j]).sum::<f64>() / cols as f64;
    for j in 0..cols {
        h[j * cols + j] += DAMP * mean;
    }
    cholesky(h, cols).map_err(SolveError::NotPositive)?;
    let mut inv = inverse_from_cholesky(h, cols);
    cholesky(&mut inv, cols).map_err(SolveError::NotPositive)?;
    // U = Lᵀ of H⁻¹'s factor, row-major (row i spreads column i's error).
    let mut ut = vec![0.0; cols * cols];
    for i in 0..cols {
        for j in i..cols {
            ut[i * cols + j] = inv[j * cols + i];
        }
    }
    let u = |i: usize, j: usize| ut[i * cols + j];

    let mut wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut pruned = vec![false; rows * cols];
    let (mut idx, mut score) = (Vec::new(), Vec::new());
    // N:M groups never straddle two blocks.
    let block = match pattern {
        Pattern::NofM { m, .. } => block.div_ceil(m) * m,
        Pattern::Unstructured(_) => block,
    };
    let mut err = vec![0.0f64; rows * block];
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        let count = i2 - i1;
        if let Pattern::Unstructured(s) = pattern {
            // The block's mask at once: the lowest w² / U_jj² of all its weights.
            score.clear();
            for r in 0..rows {
                for j in i1..i2 {
                    let d = u(j, j);
                    score.push((wd[r * cols + j] * wd[r * cols + j] / (d * d)) as f32);
                }
            }
            smallest(&score, count_of(rows * count, s), &mut idx);
            for &k in idx.iter() {
                let (r, j) = (k as usize / count, k as usize % count);
                pruned[r * cols + i1 + j] = true;
            }
        }
        for i in 0..count {
            let col = i1 + i;
            if let Pattern::NofM { n, m } = pattern {
                if i % m == 0 {
                    // This group of m columns: each row keeps its n of highest w² / U_jj².
                    let g = m.min(count - i);
                    for r in 0..rows {
                        score.clear();
                        for j in col..col + g {
                            let d = u(j, j);
                            score.push((wd[r * cols + j] * wd[r * cols + j] / (d * d)) as f32);
                        }
                        smallest(&score, g.saturating_sub(n), &mut idx);
                        for &k in idx.iter() {
                            pruned[r * cols + col + k as usize] = true;
                        }
                    }
                }
            }
            let d = u(col, col);
            for r in 0..rows {
                let row = &mut wd[r * cols..(r + 1) * cols];
                let wv = row[col];
                let q = if pruned[r * cols + col] { 0.0 } else { wv };
                let e = (wv - q) / d;
                err[r * block + i] = e;
                row[col] = q;
                if e != 0.0 {
                    let spread = &ut[col * cols + col + 1..col * cols + i2];
                    for (v, &uj) in row[col + 1..i2].iter_mut().zip(spread) {
                        *v -= e * uj;
                    }
                }
            }
        }
        // The lazy update: the block's errors reach every column after it.
        if i2 < cols {
            for r in 0..rows {
                let e = &err[r * block..r * block + count];
                let row = &mut wd[r * cols..(r + 1) * cols];
                for (i, &ev) in e.iter().enumerate() {
                    if ev == 0.0 {
                        continue;
                    }
                    let spread = &ut[(i1 + i) * cols + i2..(i1 + i + 1) * cols];
                    for (v, &uj) in row[i2..].iter_mut().zip(spread) {
                        *v -= ev * uj;
                    }
                }
            }
        }
    }
    for (o, (&v, &p)) in w.iter_mut().zip(wd.iter().zip(pruned.iter())) {
        *o = if p { 0.0 } else { v as f32 };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_and_inverse() {
        // A = [[4, 2], [2, 3]]: L = [[2, 0], [1, √2]], A⁻¹ = [[3, −2], [−2, 4]] / 8.
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        cholesky(&mut a, 2).unwrap();
        assert_eq!(&a[..3], &[2.0, 0.0, 1.0]);
        assert!((a[3] - 2f64.sqrt()).abs() < 1e-12);
        let inv = inverse_from_cholesky(&a, 2);
        for (x, y) in inv.iter().zip([3.0, -2.0, -2.0, 4.0]) {
            assert!((x - y / 8.0).abs() < 1e-12, "{inv:?}");
        }
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky(&mut bad, 2), Err(1));
    }

    /// With inputs that are independent (H diagonal), the OBS update has nothing to move:
    /// SparseGPT is then Wanda-like, pruning the lowest w²·H_jj, and keeps the rest as they were.
    #[test]
    fn diagonal_hessian_only_masks() {
        let (rows, cols) = (2, 4);
        let mut w = vec![1.0, -2.0, 0.5, 3.0, 0.1, 0.2, -0.3, 0.4];
        let mut h = vec![0.0; 16];
        for (j, d) in [1.0, 1.0, 100.0, 1.0].iter().enumerate() {
            h[j * cols + j] = *d;
        }
        prune(
            &mut w,
            rows,
            cols,
            &mut h,
            Pattern::NofM { n: 2, m: 4 },
            128,
        )
        .unwrap();
        // Row 0 scores ∝ w²·(H_jj + λ): about 1, 4, 25, 9 → keeps 0.5 and 3.
        assert_eq!(&w[..4], &[0.0, 0.0, 0.5, 3.0]);
        // Row 1: 0.01, 0.04, 9, 0.16 → keeps -0.3 and 0.4.
        assert_eq!(&w[4..], &[0.0, 0.0, -0.3, 0.4]);
    }
}
