//! Processors that rewrite individual scores, on a full row indexed by token id. They work on
//! logits (sampling) and on log-probabilities (beam search applies them after the log-softmax,
//! as Hugging Face's `generate()` does).

/// `scores[id] += bias` for every pair.
pub fn apply_logit_bias(scores: &mut [f32], bias: &[(u32, f32)]) {
    for &(id, b) in bias {
        if let Some(s) = scores.get_mut(id as usize) {
            *s += b;
        }
    }
}

/// Repetition (CTRL), presence and frequency (OpenAI) penalties for the tokens of `window`.
/// For a token seen c > 0 times:
///   s ← s / r if s > 0, else s · r        (repetition penalty r)
///   s ← s − c · frequency − presence
/// `counts` is scratch of at least `scores.len()` zeros and is left all zeros.
pub fn apply_penalties(
    scores: &mut [f32],
    window: &[u32],
    repetition: f32,
    presence: f32,
    frequency: f32,
    counts: &mut [u32],
) {
    for &t in window {
        if let Some(c) = counts.get_mut(t as usize) {
            *c += 1;
        }
    }
    // Each distinct token once: its count is cleared after use.
    for &t in window {
        let t = t as usize;
        let c = match counts.get(t) {
            Some(&c) if c > 0 => c,
            _ => continue,
        };
        counts[t] = 0;
        let Some(s) = scores.get_mut(t) else { continue };
        if repetition != 1.0 {
            *s = if *s > 0.0 {
                *s / repetition
            } else {
                *s * repetition
            };
        }
        *s -= c as f32 * frequency + presence;
    }
}

/// Bans (sets to −∞) every token that would complete an n-gram already present in `history`,
/// as Hugging Face's `NoRepeatNGramLogitsProcessor` does: the n-grams are those of the whole
/// context, and the candidate n-gram is the last n − 1 tokens followed by the next one.
pub fn ban_repeated_ngrams(scores: &mut [f32], history: &[u32], n: usize) {
    // Fewer than n tokens hold no complete n-gram to repeat.
    if n == 0 || history.len() < n {
        return;
    }
    let prefix = &history[history.len() + 1 - n..];
    // Every start i of an n-gram history[i..i+n] whose first n − 1 tokens equal `prefix`.
    for i in 0..=(history.len() - n) {
        if &history[i..i + n - 1] == prefix {
            if let Some(s) = scores.get_mut(history[i + n - 1] as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// `scores ← scores − logsumexp(scores)` (log-probabilities), summed in f64.
pub fn log_softmax_inplace(scores: &mut [f32]) {
    let lse = logsumexp(scores);
    for s in scores.iter_mut() {
        *s = (*s as f64 - lse) as f32;
    }
}

/// log Σ exp(s), stable; −∞ for an empty or all −∞ row.
pub fn logsumexp(scores: &[f32]) -> f64 {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = scores.iter().map(|&s| ((s - max) as f64).exp()).sum();
    max as f64 + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_follow_the_formulas() {
        let mut s = vec![2.0f32, -2.0, 1.0, 0.5];
        let mut counts = vec![0u32; 4];
        // Token 0 twice, token 1 once; token 3 never.
        apply_penalties(&mut s, &[0, 1, 0], 2.0, 0.5, 0.25, &mut counts);
        assert_eq!(
            s,
            vec![2.0 / 2.0 - 2.0 * 0.25 - 0.5, -4.0 - 0.25 - 0.5, 1.0, 0.5]
        );
        assert!(counts.iter().all(|&c| c == 0));
        let mut s = vec![1.0f32; 3];
        apply_logit_bias(&mut s, &[(2, f32::NEG_INFINITY), (0, 0.5), (9, 1.0)]);
        assert_eq!(s, vec![1.5, 1.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn ngram_bans() {
        // History 1 2 3 1 2: with n = 3 the prefix is (1, 2), seen before followed by 3.
        let mut s = vec![0.0f32; 5];
        ban_repeated_ngrams(&mut s, &[1, 2, 3, 1, 2], 3);
        assert_eq!(s, vec![0.0, 0.0, 0.0, f32::NEG_INFINITY, 0.0]);
        // n = 1 bans every token seen.
        let mut s = vec![0.0f32; 5];
        ban_repeated_ngrams(&mut s, &[4, 1], 1);
        assert_eq!(s[1], f32::NEG_INFINITY);
        assert_eq!(s[4], f32::NEG_INFINITY);
        assert_eq!(s[0], 0.0);
        // Too short a history bans nothing.
        for (h, n) in [(&[1u32][..], 3), (&[1], 2), (&[], 1)] {
            let mut s = vec![0.0f32; 5];
            ban_repeated_ngrams(&mut s, h, n);
            assert!(s.iter().all(|&x| x == 0.0));
        }
        // n = 2: history 1 2 1 → bigram (1, 2) exists, 2 is banned after 1.
        let mut s = vec![0.0f32; 5];
        ban_repeated_ngrams(&mut s, &[1, 2, 1], 2);
        assert_eq!(s[2], f32::NEG_INFINITY);
        assert_eq!(s.iter().filter(|x| x.is_infinite()).count(), 1);
    }

    #[test]
    fn log_softmax_normalizes() {
        let mut s = vec![1.0f32, 2.0, 3.0, f32::NEG_INFINITY];
        log_softmax_inplace(&mut s);
        let total: f64 = s.iter().map(|&x| (x as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(s[3], f32::NEG_INFINITY);
    }
}
