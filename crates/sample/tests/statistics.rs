//! Statistical tests of every sampler: many draws from a fixed distribution with a fixed seed,
//! their frequencies checked against the exact distribution the chain should produce (computed
//! here independently, in f64) with a chi-square test, and the exact support of each filter.

use tuili_sample::{Sampler, SamplingParams, Stage};

/// Fixed logits over 10 tokens (distinct, so every filter's boundary is unambiguous).
const LOGITS: [f32; 10] = [2.0, 1.3, 0.9, 3.1, -0.5, 0.2, 2.6, -1.7, 1.8, 0.0];
const DRAWS: usize = 40_000;

fn softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// The distribution restricted to `support` and renormalised, at temperature `t`.
fn restricted(l: &[f64], support: &[usize], t: f64) -> Vec<f64> {
    let mut masked = vec![f64::NEG_INFINITY; l.len()];
    for &i in support {
        masked[i] = l[i] / t;
    }
    softmax(&masked)
}

/// The length of the shortest prefix of `order` whose probability mass reaches `p`.
fn prefix_reaching(probs: &[f64], order: &[usize], p: f64) -> usize {
    let mut cum = 0.0;
    for (n, &i) in order.iter().enumerate() {
        cum += probs[i];
        if cum >= p {
            return n + 1;
        }
    }
    order.len()
}

/// Ids by descending logit.
fn ranked(l: &[f64]) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..l.len()).collect();
    ids.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
    ids
}

fn logits64() -> Vec<f64> {
    LOGITS.iter().map(|&x| x as f64).collect()
}

/// ln Γ(x) (Lanczos, g = 7), for the chi-square tail.
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// P(X ≥ x) for a chi-square variable with k degrees of freedom: the regularised upper
/// incomplete gamma Q(k/2, x/2), by its series below a + 1 and its continued fraction above.
fn chi2_sf(x: f64, k: usize) -> f64 {
    let (a, x) = (k as f64 / 2.0, x / 2.0);
    if x <= 0.0 {
        return 1.0;
    }
    let lg = ln_gamma(a);
    if x < a + 1.0 {
        let (mut sum, mut term, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term < sum * 1e-15 {
                break;
            }
        }
        1.0 - sum * (-x + a * x.ln() - lg).exp()
    } else {
        // Lentz's method.
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (-x + a * x.ln() - lg).exp() * h
    }
}

#[test]
fn chi2_tail_matches_tables() {
    // Critical values at 5% and 0.1% from standard tables.
    for (x, k, p) in [
        (3.841, 1, 0.05),
        (18.307, 10, 0.05),
        (10.828, 1, 0.001),
        (29.588, 10, 0.001),
        (5.991, 2, 0.05),
    ] {
        let got = chi2_sf(x, k);
        assert!((got - p).abs() < p * 0.01, "chi2_sf({x}, {k}) = {got}");
    }
}

/// Draws `DRAWS` tokens, checks none falls outside the support of `want` and that the
/// frequencies fit `want` (chi-square p-value above 0.001; the seed is fixed, so the test is
/// deterministic — a failure means the distribution is wrong, not bad luck).
fn check(label: &str, params: SamplingParams, history: &[u32], want: &[f64]) {
    let mut s = Sampler::new(params, LOGITS.len()).unwrap();
    s.accept_all(history);
    let mut counts = vec![0usize; LOGITS.len()];
    for _ in 0..DRAWS {
        counts[s.sample(&LOGITS).unwrap() as usize] += 1;
    }
    let mut stat = 0.0;
    let mut cells = 0;
    for (i, (&c, &p)) in counts.iter().zip(want).enumerate() {
        if p == 0.0 {
            assert_eq!(
                c, 0,
                "{label}: token {i} is outside the support but was drawn"
            );
            continue;
        }
        let e = p * DRAWS as f64;
        stat += (c as f64 - e).powi(2) / e;
        cells += 1;
    }
    if cells <= 1 {
        assert_eq!(counts.iter().filter(|&&c| c > 0).count(), 1, "{label}");
        return;
    }
    let pv = chi2_sf(stat, cells - 1);
    assert!(
        pv > 1e-3,
        "{label}: chi-square {stat:.2} with {} df, p = {pv:.2e}; counts {counts:?}, want {want:?}",
        cells - 1
    );
}

fn off(seed: u64) -> SamplingParams {
    SamplingParams::plain(1.0, seed)
}

#[test]
fn plain_and_temperature() {
    let l = logits64();
    check("t=1", off(1), &[], &softmax(&l));
    for t in [0.5, 1.7] {
        let p = SamplingParams {
            temperature: t as f32,
            ..off(2)
        };
        let want = softmax(&l.iter().map(|x| x / t).collect::<Vec<_>>());
        check(&format!("t={t}"), p, &[], &want);
    }
}

#[test]
fn top_k() {
    let l = logits64();
    for k in [1, 2, 5] {
        let support = &ranked(&l)[..k];
        let p = SamplingParams { top_k: k, ..off(3) };
        check(&format!("top_k={k}"), p, &[], &restricted(&l, support, 1.0));
    }
}

#[test]
fn top_p_keeps_the_minimal_nucleus() {
    let l = logits64();
    let probs = softmax(&l);
    for top_p in [0.3, 0.6, 0.85, 0.99] {
        // The smallest prefix of the ranked tokens whose mass reaches p.
        let order = ranked(&l);
        let n = prefix_reaching(&probs, &order, top_p);
        // Minimal: one token fewer does not reach p.
        let without_last: f64 = order[..n - 1].iter().map(|&i| probs[i]).sum();
        assert!(without_last < top_p);
        let p = SamplingParams {
            top_p: top_p as f32,
            ..off(4)
        };
        check(
            &format!("top_p={top_p}"),
            p,
            &[],
            &restricted(&l, &order[..n], 1.0),
        );
    }
}

#[test]
fn min_p_threshold() {
    let l = logits64();
    let probs = softmax(&l);
    let pmax = probs.iter().cloned().fold(0.0, f64::max);
    for min_p in [0.05, 0.3, 0.7] {
        let support: Vec<usize> = (0..l.len()).filter(|&i| probs[i] >= min_p * pmax).collect();
        let p = SamplingParams {
            min_p: min_p as f32,
            ..off(5)
        };
        check(
            &format!("min_p={min_p}"),
            p,
            &[],
            &restricted(&l, &support, 1.0),
        );
    }
}

#[test]
fn typical_p() {
    let l = logits64();
    let probs = softmax(&l);
    let ent: f64 = probs.iter().map(|p| -p * p.ln()).sum();
    for mass in [0.2, 0.5, 0.9] {
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| {
            (-probs[a].ln() - ent)
                .abs()
                .total_cmp(&(-probs[b].ln() - ent).abs())
        });
        let n = prefix_reaching(&probs, &order, mass);
        let p = SamplingParams {
            typical_p: mass as f32,
            ..off(6)
        };
        check(
            &format!("typical_p={mass}"),
            p,
            &[],
            &restricted(&l, &order[..n], 1.0),
        );
    }
}

#[test]
fn penalties_and_bias() {
    let l = logits64();
    // History: token 3 three times, token 6 once, token 0 once (outside a window of 4).
    let history = [0u32, 3, 6, 3, 3];
    let (rep, pres, freq) = (1.5f64, 0.4f64, 0.3f64);
    let mut want = l.clone();
    for (t, c) in [(3usize, 3.0f64), (6, 1.0)] {
        want[t] = if want[t] > 0.0 {
            want[t] / rep
        } else {
            want[t] * rep
        };
        want[t] -= c * freq + pres;
    }
    let p = SamplingParams {
        repetition_penalty: rep as f32,
        presence_penalty: pres as f32,
        frequency_penalty: freq as f32,
        penalty_last_n: 4,
        ..off(7)
    };
    check("penalties", p, &history, &softmax(&want));
    // Whole-context window: token 0 is penalised too.
    let mut want_all = want.clone();
    want_all[0] = l[0] / rep - freq - pres;
    let p = SamplingParams {
        repetition_penalty: rep as f32,
        presence_penalty: pres as f32,
        frequency_penalty: freq as f32,
        penalty_last_n: -1,
        ..off(8)
    };
    check("penalties, whole context", p, &history, &softmax(&want_all));
    // Logit bias, including a ban.
    let mut want = l.clone();
    want[4] += 3.0;
    want[3] = f64::NEG_INFINITY;
    let p = SamplingParams {
        logit_bias: vec![(4, 3.0), (3, f32::NEG_INFINITY)],
        ..off(9)
    };
    check("logit bias", p, &[], &softmax(&want));
    // No-repeat bigrams: history … 6 3 … ends in 3, and (3, 6) and (3, 3) occurred.
    let mut want = l.clone();
    want[6] = f64::NEG_INFINITY;
    want[3] = f64::NEG_INFINITY;
    let p = SamplingParams {
        no_repeat_ngram_size: 2,
        ..off(10)
    };
    check("no_repeat_ngram_size=2", p, &history, &softmax(&want));
}

#[test]
fn the_default_chain_and_a_custom_order() {
    let l = logits64();
    // llama.cpp's defaults: top-k 40 (all 10) → top-p 0.95 → min-p 0.05 → temperature 0.8.
    let probs = softmax(&l);
    let order = ranked(&l);
    let n = prefix_reaching(&probs, &order, 0.95);
    let nucleus = &order[..n];
    let sub = restricted(&l, nucleus, 1.0);
    let pmax = sub.iter().cloned().fold(0.0, f64::max);
    let support: Vec<usize> = nucleus
        .iter()
        .copied()
        .filter(|&i| sub[i] >= 0.05 * pmax)
        .collect();
    let p = SamplingParams {
        seed: 11,
        ..SamplingParams::default()
    };
    check("default chain", p, &[], &restricted(&l, &support, 0.8));
    // Temperature first (vLLM's order): top-p then sees the sharpened distribution.
    let t = 0.5;
    let sharp: Vec<f64> = l.iter().map(|x| x / t).collect();
    let sp = softmax(&sharp);
    let order = ranked(&sharp);
    let n = prefix_reaching(&sp, &order, 0.9);
    let p = SamplingParams {
        temperature: t as f32,
        top_p: 0.9,
        order: vec![Stage::Temperature, Stage::TopP],
        ..off(12)
    };
    check(
        "temperature → top_p",
        p,
        &[],
        &restricted(&sharp, &order[..n], 1.0),
    );
}

#[test]
fn streams_differ_and_repeat() {
    let draw = |stream| {
        let mut s = Sampler::with_stream(off(5), LOGITS.len(), stream).unwrap();
        (0..64)
            .map(|_| s.sample(&LOGITS).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(0), draw(0));
    assert_ne!(draw(0), draw(1));
}
