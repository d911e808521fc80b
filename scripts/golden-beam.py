#!/usr/bin/env python3
"""Golden outputs of Hugging Face beam search on a toy model, for tuili's beam driver.

`transformers` needs torch, which does not install on the CI machines, so this is a faithful
re-implementation in numpy (float32, as torch computes) of what `model.generate(num_beams=...,
do_sample=False)` does for a decoder-only model, following transformers' code structure line
by line (generation/beam_search.py: `BeamHypotheses`, `BeamSearchScorer.process/finalize`;
generation/utils.py: the beam search loop; generation/logits_process.py:
`RepetitionPenaltyLogitsProcessor`, `NoRepeatNGramLogitsProcessor`), in the version that
counts lengths from the end of the prompt (`decoder_prompt_len`, transformers ≥ 4.35).

The toy model's logits are a hash of the context, the same function as
`crates/engine/src/beam.rs` (`toy::logits`).

    python3 scripts/golden-beam.py > tests/golden/beam-hf.json
"""
import itertools
import json

import numpy as np

M64 = (1 << 64) - 1


def splitmix(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def toy_logits(ctx, nv, eos_bias):
    h = 0xCBF29CE484222325
    for t in ctx:
        h ^= int(t)
        h = (h * 0x100000001B3) & M64
    out = []
    for v in range(nv):
        x = splitmix(h ^ ((v * 0x9E3779B97F4A7C15) & M64))
        u = (x >> 11) / float(1 << 53)
        out.append(u * 6.0 - 3.0 + (eos_bias if v == 0 else 0.0))
    return np.array(out, dtype=np.float64).astype(np.float32)


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))).astype(np.float32)


# --- logits_process.py ---------------------------------------------------------------------

def repetition_penalty(input_ids, scores, penalty):
    # score = gather(scores, input_ids); where(score < 0, score * penalty, score / penalty)
    for b in range(input_ids.shape[0]):
        ids = input_ids[b]
        s = scores[b, ids]
        s = np.where(s < 0, s * np.float32(penalty), s / np.float32(penalty)).astype(np.float32)
        scores[b, ids] = s
    return scores


def get_ngrams(ngram_size, prev_input_ids, num_hypos):
    generated_ngrams = [{} for _ in range(num_hypos)]
    for idx in range(num_hypos):
        gen_tokens = prev_input_ids[idx].tolist()
        generated_ngram = generated_ngrams[idx]
        for ngram in zip(*[gen_tokens[i:] for i in range(ngram_size)]):
            prev_ngram_tuple = tuple(ngram[:-1])
            generated_ngram[prev_ngram_tuple] = generated_ngram.get(prev_ngram_tuple, []) + [ngram[-1]]
    return generated_ngrams


def get_generated_ngrams(banned_ngrams, prev_input_ids, ngram_size, cur_len):
    start_idx = cur_len + 1 - ngram_size
    ngram_idx = tuple(prev_input_ids[start_idx:cur_len].tolist())
    return banned_ngrams.get(ngram_idx, [])


def calc_banned_ngram_tokens(ngram_size, prev_input_ids, num_hypos, cur_len):
    if cur_len + 1 < ngram_size:
        return [[] for _ in range(num_hypos)]
    generated_ngrams = get_ngrams(ngram_size, prev_input_ids, num_hypos)
    return [
        get_generated_ngrams(generated_ngrams[hypo_idx], prev_input_ids[hypo_idx], ngram_size, cur_len)
        for hypo_idx in range(num_hypos)
    ]


def no_repeat_ngram(input_ids, scores, ngram_size):
    num_batch_hypotheses = scores.shape[0]
    cur_len = input_ids.shape[-1]
    banned_batch_tokens = calc_banned_ngram_tokens(ngram_size, input_ids, num_batch_hypotheses, cur_len)
    for i, banned_tokens in enumerate(banned_batch_tokens):
        scores[i, banned_tokens] = -np.inf
    return scores


# --- beam_search.py ------------------------------------------------------------------------

class BeamHypotheses:
    def __init__(self, num_beams, length_penalty, early_stopping, max_length=None):
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.max_length = max_length
        self.num_beams = num_beams
        self.beams = []
        self.worst_score = 1e9

    def __len__(self):
        return len(self.beams)

    def add(self, hyp, sum_logprobs, beam_indices=None, generated_len=None):
        if generated_len is not None:
            score = sum_logprobs / (generated_len ** self.length_penalty)
        else:
            score = sum_logprobs / (hyp.shape[-1] ** self.length_penalty)
        if len(self) < self.num_beams or score > self.worst_score:
            self.beams.append((score, hyp, beam_indices))
            if len(self) > self.num_beams:
                sorted_next_scores = sorted([(s, idx) for idx, (s, _, _) in enumerate(self.beams)])
                del self.beams[sorted_next_scores[0][1]]
                self.worst_score = sorted_next_scores[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs, cur_len, decoder_prompt_len=0):
        if len(self) < self.num_beams:
            return False
        if self.early_stopping is True:
            return True
        elif self.early_stopping is False:
            highest_attainable_score = best_sum_logprobs / (cur_len - decoder_prompt_len) ** self.length_penalty
            return self.worst_score >= highest_attainable_score
        else:
            if self.length_penalty > 0.0:
                highest_attainable_score = best_sum_logprobs / (self.max_length - decoder_prompt_len) ** self.length_penalty
            else:
                highest_attainable_score = best_sum_logprobs / (cur_len - decoder_prompt_len) ** self.length_penalty
            return self.worst_score >= highest_attainable_score


class BeamSearchScorer:
    """batch_size = 1, num_beam_groups = 1."""

    def __init__(self, num_beams, length_penalty, do_early_stopping, num_beam_hyps_to_keep, max_length):
        self.num_beams = num_beams
        self.group_size = num_beams
        self.num_beam_hyps_to_keep = num_beam_hyps_to_keep
        self._beam_hyps = [BeamHypotheses(num_beams, length_penalty, do_early_stopping, max_length)]
        self._done = [False]

    @property
    def is_done(self):
        return all(self._done)

    def process(self, input_ids, next_scores, next_tokens, next_indices, eos_token_id, decoder_prompt_len):
        cur_len = input_ids.shape[-1] + 1
        next_beam_scores = np.zeros((1, self.group_size), dtype=np.float32)
        next_beam_tokens = np.zeros((1, self.group_size), dtype=np.int64)
        next_beam_indices = np.zeros((1, self.group_size), dtype=np.int64)
        batch_idx = 0
        beam_hyp = self._beam_hyps[0]
        assert not self._done[0]
        beam_idx = 0
        for beam_token_rank, (next_token, next_score, next_index) in enumerate(
            zip(next_tokens[batch_idx], next_scores[batch_idx], next_indices[batch_idx])
        ):
            batch_beam_idx = batch_idx * self.group_size + next_index
            if int(next_token) in eos_token_id:
                is_beam_token_worse_than_top_num_beams = beam_token_rank >= self.group_size
                if is_beam_token_worse_than_top_num_beams:
                    continue
                beam_hyp.add(
                    input_ids[batch_beam_idx].copy(),
                    float(next_score),
                    generated_len=cur_len - decoder_prompt_len,
                )
            else:
                next_beam_scores[batch_idx, beam_idx] = next_score
                next_beam_tokens[batch_idx, beam_idx] = next_token
                next_beam_indices[batch_idx, beam_idx] = batch_beam_idx
                beam_idx += 1
            if beam_idx == self.group_size:
                break
        if beam_idx < self.group_size:
            raise ValueError("too many eos tokens")
        self._done[batch_idx] = self._done[batch_idx] or beam_hyp.is_done(
            float(next_scores[batch_idx].max()), cur_len, decoder_prompt_len
        )
        return next_beam_scores.reshape(-1), next_beam_tokens.reshape(-1), next_beam_indices.reshape(-1)

    def finalize(self, input_ids, final_beam_scores, decoder_prompt_len):
        beam_hyp = self._beam_hyps[0]
        if not self._done[0]:
            for beam_id in range(self.num_beams):
                final_score = float(final_beam_scores[beam_id])
                final_tokens = input_ids[beam_id]
                generated_len = final_tokens.shape[-1] - decoder_prompt_len
                beam_hyp.add(final_tokens, final_score, generated_len=generated_len)
        sorted_hyps = sorted(beam_hyp.beams, key=lambda x: x[0])
        best = []
        for _ in range(self.num_beam_hyps_to_keep):
            score, hyp, _ = sorted_hyps.pop()
            best.append((float(np.float32(score)), hyp[decoder_prompt_len:].tolist()))
        return best


# --- utils.py: _beam_search for one prompt --------------------------------------------------

def beam_search(prompt, nv, eos_bias, num_beams, length_penalty, early_stopping, max_new,
                no_repeat_ngram_size, rep_penalty, num_return):
    eos_token_id = [0]
    max_length = len(prompt) + max_new
    decoder_prompt_len = len(prompt)
    scorer = BeamSearchScorer(num_beams, length_penalty, early_stopping, num_return, max_length)
    input_ids = np.tile(np.array(prompt, dtype=np.int64), (num_beams, 1))
    beam_scores = np.zeros((num_beams,), dtype=np.float32)
    beam_scores[1:] = -1e9
    cur_len = input_ids.shape[-1]
    while True:
        logits = np.stack([toy_logits(row.tolist(), nv, eos_bias) for row in input_ids])
        next_token_scores = log_softmax(logits)
        if rep_penalty != 1.0:
            next_token_scores = repetition_penalty(input_ids, next_token_scores, rep_penalty)
        if no_repeat_ngram_size > 0:
            next_token_scores = no_repeat_ngram(input_ids, next_token_scores, no_repeat_ngram_size)
        next_token_scores = next_token_scores + beam_scores[:, None]
        vocab_size = next_token_scores.shape[-1]
        next_token_scores = next_token_scores.reshape(1, num_beams * vocab_size)
        n_tokens_to_keep = max(2, 1 + len(eos_token_id)) * num_beams
        # torch.topk(largest=True, sorted=True); ties (none occur here) by lower index.
        order = np.argsort(-next_token_scores[0], kind="stable")[:n_tokens_to_keep]
        next_tokens = order[None, :]
        scores = next_token_scores[0, order][None, :]
        next_indices = next_tokens // vocab_size
        next_tokens = next_tokens % vocab_size
        beam_scores, beam_next_tokens, beam_idx = scorer.process(
            input_ids, scores, next_tokens, next_indices, eos_token_id, decoder_prompt_len
        )
        input_ids = np.concatenate([input_ids[beam_idx, :], beam_next_tokens[:, None]], axis=-1)
        cur_len = cur_len + 1
        if scorer.is_done or input_ids.shape[-1] >= max_length:
            break
    return scorer.finalize(input_ids, beam_scores, decoder_prompt_len)


def main():
    cases = []
    settings = [([5, 1, 7], 8, 0.5, 6), ([2], 6, 1.0, 9)]
    for (prompt, nv, bias, max_new), nb, lp, es, ngram, rep in itertools.product(
        settings, [2, 3, 5], [-1.0, 0.0, 1.0, 2.0], [True, False, "never"], [0, 2], [1.0, 1.3]
    ):
        best = beam_search(prompt, nv, bias, nb, lp, es, max_new, ngram, rep, nb)
        cases.append({
            "prompt": prompt, "n_vocab": nv, "eos_bias": bias, "max_new_tokens": max_new,
            "num_beams": nb, "length_penalty": lp,
            "early_stopping": es if isinstance(es, str) else ("true" if es else "false"),
            "no_repeat_ngram_size": ngram, "repetition_penalty": rep,
            "sequences": [s for _, s in best], "scores": [sc for sc, _ in best],
        })
    json.dump({"generator": "scripts/golden-beam.py", "eos_token_id": 0, "cases": cases},
              __import__("sys").stdout, separators=(",", ":"))
    print()


if __name__ == "__main__":
    main()
