#!/usr/bin/env python3
"""Writes tests/golden/stories260K-llamacpp.json: llama.cpp's tokenization, first-step logits and
greedy continuation of several prompts with ../shared/fixtures/models/stories260K/stories260K.gguf.

llama.cpp comes from PyPI's llama-cpp-python (it builds llama.cpp from source). Set-up, once,
outside the repository:

    python3 -m venv ~/.cache/tuili/llamacpp-venv
    CC=clang CXX=clang++ ~/.cache/tuili/llamacpp-venv/bin/pip install llama-cpp-python==0.3.36 numpy

Run: ~/.cache/tuili/llamacpp-venv/bin/python scripts/golden-llamacpp.py
"""
import json
import os
import sys

import llama_cpp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "..", "shared", "fixtures", "models", "stories260K", "stories260K.gguf")
OUT = os.path.join(ROOT, "tests", "golden", "stories260K-llamacpp.json")
PROMPTS = [
    "",
    "Once upon a time",
    "The little dog",
    "Lily and Tom went to the park. They",
    "One day, a big bird",
]
N_GEN = 64


def main():
    # F32 KV cache: llama.cpp's default F16 cache rounds K and V (≈1e-3 on these logits);
    # tuili keeps the cache in f32, so compare like with like.
    llm = llama_cpp.Llama(model_path=MODEL, n_ctx=512, n_batch=512, logits_all=True,
                          n_threads=2, verbose=False, type_k=0, type_v=0)
    eos = llm.token_eos()
    cases = []
    for prompt in PROMPTS:
        llm.reset()
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        llm.eval(ids)
        first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        gen = []
        logits = first
        for _ in range(N_GEN):
            tok = int(np.argmax(logits))
            gen.append(tok)
            if tok == eos:
                break
            llm.eval([tok])
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        text = llm.detokenize(gen).decode("utf-8", errors="replace")
        cases.append({
            "prompt": prompt,
            "prompt_ids": ids,
            "first_logits": [float(f"{x:.6g}") for x in first.tolist()],
            "greedy_ids": gen,
            "greedy_text": text,
        })
        print(f"{prompt!r}: {ids} -> {text[:60]!r}", file=sys.stderr)
    with open(OUT, "w") as f:
        json.dump({
            "model": "stories260K.gguf",
            "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}, F32 KV cache",
            "n_gen": N_GEN,
            "cases": cases,
        }, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
