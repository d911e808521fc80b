#!/usr/bin/env python3
"""Writes tests/golden/dequant-gguf-py.json: random raw blocks of every GGML type tuili
dequantizes, with the f32 values that the `gguf` Python package (gguf-py, maintained in the
llama.cpp tree; its numpy code mirrors ggml-quants.c) produces for them.

Run with any Python that has `gguf` and numpy (e.g. the llama-cpp-python venv of
scripts/golden-llamacpp.py): python scripts/golden-dequant.py
"""
import base64
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "golden", "dequant-gguf-py.json")

# Byte offsets of the f16 scale fields in each block; they get sane values (random bytes
# there would often be Inf/NaN, which says nothing about the layout).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1,
         T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]  # Q8_K: gguf-py has no dequantizer; see quant.rs tests


def main():
    rng = np.random.default_rng(20261128)
    cases = []
    for t in TYPES:
        block_len, block_bytes = GGML_QUANT_SIZES[t]
        n_blocks = 2 if block_len == 256 else 8
        if t == T.F32:
            raw = rng.standard_normal(64).astype("<f4").tobytes()
        elif t == T.F16:
            raw = rng.standard_normal(64).astype("<f2").tobytes()
        elif t == T.BF16:
            raw = (rng.standard_normal(64).astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
        else:
            raw = bytearray(rng.integers(0, 256, n_blocks * block_bytes, dtype=np.uint8).tobytes())
            for b in range(n_blocks):
                for off in F16_FIELDS.get(t, []):
                    v = np.float16(rng.uniform(-0.05, 0.05) if off == 0 or t in (T.Q3_K, T.Q6_K) else rng.uniform(0, 0.05))
                    raw[b * block_bytes + off: b * block_bytes + off + 2] = v.tobytes()
                if t == T.Q8_K:
                    d = np.float32(rng.uniform(-0.05, 0.05))
                    raw[b * block_bytes: b * block_bytes + 4] = d.tobytes()
            raw = bytes(raw)
        vals = quants.dequantize(np.frombuffer(raw, dtype=np.uint8), t).astype(np.float32).reshape(-1)
        cases.append({
            "type": t.name,
            "raw_base64": base64.b64encode(raw).decode(),
            "values": [float(x) for x in vals.tolist()],
        })
    with open(OUT, "w") as f:
        json.dump({"reference": "gguf-py quants.dequantize", "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
