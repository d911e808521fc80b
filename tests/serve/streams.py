"""16 concurrent streaming completions through the official `openai` client; prints them as
one JSON list (by request), for comparing two servers (crates/cli/tests/mpi.rs: one process
against a group of ranks under mpirun).

Greedy: which requests share a batch step depends on when they arrive, and a batch's size
changes the order of floating-point sums (issue 23, batch invariance, is not done); a sampled
stream then sometimes takes another token where two are nearly equally likely. Greedy
decoding is immune but for near-exact ties.

Usage: streams.py BASE_URL
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="x", max_retries=0, timeout=120)
PROMPTS = ["Once upon a time", "Lily", "The cat", "Tom and Sue", "One day", "The sun"]


def one(i):
    stream = client.completions.create(
        model="stories260K",
        prompt=PROMPTS[i % len(PROMPTS)],
        max_tokens=24 + i,
        temperature=0.0,
        seed=1000 + i,
        stream=True,
    )
    return "".join(c.choices[0].text for c in stream)


with ThreadPoolExecutor(16) as pool:
    texts = list(pool.map(one, range(16)))
assert all(texts), texts
print(json.dumps(texts))
