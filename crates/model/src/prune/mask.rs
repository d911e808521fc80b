//! Which weights a row loses: the pattern (a fraction of the row, or N of every M kept) and
//! the choice of the weights of lowest score under it. Scores are the method's (|W| for
//! magnitude, |W|·‖X_j‖₂ for Wanda); SparseGPT chooses with its own scores as it goes
//! (`super::sparsegpt`) but through the same selection.
//!
//! May not: read files or run the model.

/// Which weights to remove from each pruned matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// This fraction of the weights (0 < s < 1): of each row (magnitude, Wanda), or of each
    /// block of columns (SparseGPT, as its paper does).
    Unstructured(f32),
    /// At most `n` non-zero weights in every `m` consecutive weights of a row (`2:4`: two of
    /// every four kept, the pattern sparse tensor cores run), `0 < n < m`. Groups start at
    /// the row's start; a last group shorter than `m` (rows of 172 weights, 4:8) also keeps
    /// at most `n`.
    NofM { n: usize, m: usize },
}

impl Pattern {
    /// `--sparsity S` or `--pattern N:M`, checked.
    pub fn parse(sparsity: Option<f32>, pattern: Option<&str>) -> Result<Pattern, String> {
        match (sparsity, pattern) {
            (Some(_), Some(_)) => Err("give --sparsity or --pattern, not both".into()),
            (None, None) => Err("say how much to prune: --sparsity 0.5 or --pattern 2:4".into()),
            (Some(s), None) if s > 0.0 && s < 1.0 => Ok(Pattern::Unstructured(s)),
            (Some(s), None) => Err(format!(
                "--sparsity {s}: the fraction of weights removed must lie strictly between 0 and 1"
            )),
            (None, Some(p)) => {
                let bad = |why: &str| format!("--pattern {p}: {why}");
                let (n, m) = p.split_once(':').ok_or_else(|| {
                    bad("write it as N:M, such as 2:4 (N of every M weights kept)")
                })?;
                let (n, m) = match (n.trim().parse::<usize>(), m.trim().parse::<usize>()) {
                    (Ok(n), Ok(m)) => (n, m),
                    _ => return Err(bad("N and M must be whole numbers, such as 2:4")),
                };
                if n == 0 || n >= m {
                    return Err(bad(
                        "N (the weights kept of every M) must be at least 1 and less than M",
                    ));
                }
                if m > 64 {
                    return Err(bad("M may be at most 64"));
                }
                Ok(Pattern::NofM { n, m })
            }
        }
    }

    /// The fraction of weights removed.
    pub fn sparsity(self) -> f64 {
        match self {
            Pattern::Unstructured(s) => s as f64,
            Pattern::NofM { n, m } => 1.0 - n as f64 / m as f64,
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Unstructured(s) => write!(f, "{:.0} % unstructured", s * 100.0),
            Pattern::NofM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// How many of `len` weights a fraction `s` removes (rounded down, as the papers' code does).
pub fn count_of(len: usize, s: f32) -> usize {
    ((len as f64) * s as f64).floor() as usize
}

/// The indices of the `k` smallest of `score` into `idx[..k]` (in no order); ties go to the
/// lower index, so the choice never depends on how the selection ran. `idx` is scratch.
pub fn smallest(score: &[f32], k: usize, idx: &mut Vec<u32>) {
    idx.clear();
    idx.extend(0..score.len() as u32);
    if k == 0 {
        idx.clear();
        return;
    }
    if k < score.len() {
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            score[a as usize]
                .total_cmp(&score[b as usize])
                .then(a.cmp(&b))
        });
    }
    idx.truncate(k);
}

/// Sets `pruned[j]` for the weights of `score` (one row) that `pattern` removes: the `k`
/// lowest of the row, or the `m − n` lowest of each group of `m`. `idx` is scratch.
pub fn choose_row(score: &[f32], pattern: Pattern, pruned: &mut [bool], idx: &mut Vec<u32>) {
    pruned.fill(false);
    match pattern {
        Pattern::Unstructured(s) => {
            smallest(score, count_of(score.len(), s), idx);
            for &j in idx.iter() {
                pruned[j as usize] = true;
            }
        }
        Pattern::NofM { n, m } => {
            for (g, s) in score.chunks(m).enumerate() {
                smallest(s, s.len().saturating_sub(n), idx);
                for &j in idx.iter() {
                    pruned[g * m + j as usize] = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_or_say_why() {
        assert_eq!(
            Pattern::parse(Some(0.5), None),
            Ok(Pattern::Unstructured(0.5))
        );
        assert_eq!(
            Pattern::parse(None, Some("2:4")),
            Ok(Pattern::NofM { n: 2, m: 4 })
        );
        for (s, p, want) in [
            (Some(1.0), None, "strictly between 0 and 1"),
            (Some(0.0), None, "strictly between 0 and 1"),
            (Some(-0.5), None, "strictly between 0 and 1"),
            (None, Some("4:4"), "less than M"),
            (None, Some("5:4"), "less than M"),
            (None, Some("0:4"), "at least 1"),
            (None, Some("24"), "N:M"),
            (None, Some("a:b"), "whole numbers"),
            (Some(0.5), Some("2:4"), "not both"),
            (None, None, "how much"),
        ] {
            let e = Pattern::parse(s, p).unwrap_err();
            assert!(e.contains(want), "{s:?} {p:?}: {e}");
        }
    }

    #[test]
    fn rows_lose_their_lowest_scores() {
        let mut idx = Vec::new();
        let mut pruned = vec![false; 8];
        let score = [5.0, 1.0, 3.0, 1.0, 0.5, 9.0, 2.0, 2.0];
        choose_row(&score, Pattern::Unstructured(0.5), &mut pruned, &mut idx);
        // The four lowest: 0.5, 1.0, 1.0, then 2.0 at index 6 before index 7 (ties: lower index).
        assert_eq!(pruned, [false, true, false, true, true, false, true, false]);
        choose_row(&score, Pattern::NofM { n: 2, m: 4 }, &mut pruned, &mut idx);
        assert_eq!(pruned, [false, true, false, true, true, false, true, false]);
        choose_row(&score, Pattern::NofM { n: 1, m: 4 }, &mut pruned, &mut idx);
        assert_eq!(pruned, [false, true, true, true, true, false, true, true]);
        // A last group shorter than M keeps at most N too.
        let mut six = vec![false; 6];
        choose_row(
            &score[..6],
            Pattern::NofM { n: 2, m: 4 },
            &mut six,
            &mut idx,
        );
        assert_eq!(six, [false, true, false, true, false, false]);
        choose_row(
            &score[..6],
            Pattern::NofM { n: 1, m: 4 },
            &mut six,
            &mut idx,
        );
        assert_eq!(six, [false, true, true, true, true, false]);
        choose_row(&score, Pattern::Unstructured(0.1), &mut pruned, &mut idx);
        assert!(pruned.iter().all(|&p| !p), "0.8 weights round down to none");
    }
}
