#!/usr/bin/env python3
"""Golden outputs of Wanda and SparseGPT on a synthetic linear layer, for tuili's pruning.

A re-implementation in numpy (float64) of the papers' reference code, line by line:
- Wanda (github.com/locuslab/wanda, `lib/prune.py`, `prune_wanda`): the metric
  |W| · sqrt(scaler_row), scaler_row the mean of each input column's squared values; per
  output row the lowest `int(cols · sparsity)` of a stable sort are removed, or, for N:M, the
  `prune_n` lowest of every `prune_m` columns (torch.topk, largest=False);
- SparseGPT (github.com/IST-DASLab/sparsegpt, `sparsegpt.py`, `SparseGPT.fasterprune`):
  H = 2/n · Σ x·xᵀ, dead inputs, 1 % dampening, the upper Cholesky factor of H⁻¹, blocks of
  columns with the lazy update, the per-block mask for unstructured sparsity, the per-group
  mask for N:M chosen from the weights as updated.

One deliberate difference from the reference: its unstructured mask is `tmp <= thresh` with
`thresh` the sorted scores' element number int(numel · sparsity), which removes one weight
more than asked; here (and in tuili) exactly int(numel · sparsity) are removed, ties going to
the lower index (a stable sort).

N:M is written as tuili (and NVIDIA) name it, N kept of every M; the reference's prune_n
is M − N.

    python3 scripts/golden-prune.py > tests/golden/prune.json
"""
import json

import numpy as np


def wanda(w, x, pattern):
    scaler_row = (x ** 2).mean(axis=0)
    metric = np.abs(w) * np.sqrt(scaler_row)[None, :]
    mask = np.zeros_like(w, dtype=bool)
    if pattern[0] == "nm":
        n, m = pattern[1], pattern[2]
        prune_n = m - n
        for ii in range(0, w.shape[1], m):
            tmp = metric[:, ii:ii + m]
            idx = np.argsort(tmp, axis=1, kind="stable")[:, :prune_n]
            np.put_along_axis(mask[:, ii:ii + m], idx, True, axis=1)
    else:
        idx = np.argsort(metric, axis=1, kind="stable")[:, :int(w.shape[1] * pattern[1])]
        np.put_along_axis(mask, idx, True, axis=1)
    out = w.copy()
    out[mask] = 0
    return out


def sparsegpt(w, x, pattern, blocksize, percdamp=0.01):
    rows, columns = w.shape
    w = w.copy()
    h = 2.0 / x.shape[0] * (x.T @ x)
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    damp = percdamp * np.mean(np.diag(h))
    h[np.arange(columns), np.arange(columns)] += damp
    l = np.linalg.cholesky(h)
    hinv_full = np.linalg.inv(l @ l.T)  # cholesky_inverse
    hinv = np.linalg.cholesky(hinv_full).T  # upper factor
    prune_n, prune_m = (pattern[2] - pattern[1], pattern[2]) if pattern[0] == "nm" else (0, 0)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        w1 = w[:, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        if prune_n == 0:
            tmp = w1 ** 2 / (np.diag(hinv1).reshape((1, -1))) ** 2
            k = int(tmp.size * pattern[1])
            order = np.argsort(tmp.flatten(), kind="stable")[:k]
            mask1 = np.zeros(tmp.size, dtype=bool)
            mask1[order] = True
            mask1 = mask1.reshape(tmp.shape)
        else:
            mask1 = np.zeros_like(w1, dtype=bool)
        for i in range(count):
            wc = w1[:, i]
            d = hinv1[i, i]
            if prune_n != 0 and i % prune_m == 0:
                tmp = w1[:, i:i + prune_m] ** 2 / (np.diag(hinv1)[i:i + prune_m].reshape((1, -1))) ** 2
                idx = np.argsort(tmp, axis=1, kind="stable")[:, :prune_n]
                np.put_along_axis(mask1[:, i:i + prune_m], idx, True, axis=1)
            q = wc.copy()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            e = (wc - q) / d
            w1[:, i:] -= np.outer(e, hinv1[i, i:])
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def main():
    rng = np.random.default_rng(20261203)
    rows, cols, tokens = 8, 32, 48
    # Inputs with unequal column scales and correlations (what makes Wanda and SparseGPT
    # differ from magnitude), rounded to f32 as tuili reads them.
    x = rng.standard_normal((tokens, cols)) * rng.uniform(0.1, 3.0, cols)[None, :]
    x = x + 0.5 * x[:, [(j + 1) % cols for j in range(cols)]]
    x[:, 5] = 0.0  # an input that never fires
    x = x.astype(np.float32).astype(np.float64)
    w = rng.standard_normal((rows, cols)).astype(np.float32).astype(np.float64)
    cases = []
    for pattern in [("u", 0.5), ("u", 0.7), ("nm", 2, 4), ("nm", 4, 8)]:
        cases.append({"method": "wanda", "pattern": list(pattern), "block": 0,
                      "out": wanda(w, x, pattern).flatten().tolist()})
        for block in (128, 8):
            cases.append({"method": "sparsegpt", "pattern": list(pattern), "block": block,
                          "out": sparsegpt(w, x, pattern, block).flatten().tolist()})
    print(json.dumps({"rows": rows, "cols": cols, "tokens": tokens,
                      "w": w.flatten().tolist(), "x": x.flatten().tolist(), "cases": cases}))


if __name__ == "__main__":
    main()
