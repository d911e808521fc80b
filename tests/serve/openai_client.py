"""The official `openai` client against a running `tuili serve` (stories260K, chatml template).

Usage: openai_client.py BASE_URL API_KEY
Run by crates/cli/tests/serve_openai.rs, which starts the server; prints one line per check and
exits non-zero on the first failure.
"""

import json
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

BASE, KEY = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)
MODEL = None


def metrics():
    """/metrics as {name{labels}: value}."""
    text = urllib.request.urlopen(BASE + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def wait_idle():
    """Until no sequence runs and no KV block is held (the loop publishes after each step)."""
    for _ in range(200):
        m = metrics()
        if m["tuili_kv_blocks_used"] == 0 and m["tuili_running_sequences"] == 0 and m["tuili_queue_depth"] == 0:
            return m
        time.sleep(0.05)
    raise AssertionError(f"server not idle: {m}")


def check(name):
    def wrap(f):
        f()
        print(f"ok  {name}", flush=True)
        return f

    return wrap


@check("models")
def _():
    global MODEL
    models = client.models.list().data
    assert len(models) == 1, models
    MODEL = models[0].id
    assert MODEL == "stories260K", MODEL


def complete(prompt, **kw):
    return client.completions.create(model=MODEL, prompt=prompt, **kw)


def expect_error(status, param, f):
    try:
        f()
    except openai.APIStatusError as e:
        assert e.status_code == status, (e.status_code, e.body)
        if param is not None:
            assert e.body.get("param") == param, e.body
        assert e.body.get("message"), e.body
        return
    raise AssertionError("no error")


@check("completions: greedy, usage, finish_reason length, deterministic")
def _():
    r = complete("Once upon a time", max_tokens=20, temperature=0)
    c = r.choices[0]
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert c.finish_reason == "length", c
    assert r.usage.completion_tokens == 20 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 20
    assert c.text.startswith(","), c.text  # stories260K: "Once upon a time, there was…"
    assert complete("Once upon a time", max_tokens=20, temperature=0).choices[0].text == c.text


@check("completions: token-id prompt and echo")
def _():
    a = complete("Once upon a time", max_tokens=8, temperature=0, echo=True).choices[0].text
    assert a.startswith("Once upon a time,"), a
    ids = [1, 300, 17, 42, 5]  # ids of the 512-token vocabulary
    r = complete(ids, max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == len(ids)


@check("completions: streaming equals the whole response")
def _():
    whole = complete("Lily and Ben", max_tokens=24, temperature=0).choices[0].text
    parts, finishes = [], []
    for chunk in complete("Lily and Ben", max_tokens=24, temperature=0, stream=True,
                          stream_options={"include_usage": True}):
        if chunk.choices:
            parts.append(chunk.choices[0].text)
            finishes.append(chunk.choices[0].finish_reason)
        else:
            assert chunk.usage.completion_tokens == 24
    assert "".join(parts) == whole, (parts, whole)
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])


@check("chat: response and streaming")
def _():
    msgs = [{"role": "system", "content": "You tell stories."},
            {"role": "user", "content": "Tell me about a cat."}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0)
    assert r.object == "chat.completion"
    m = r.choices[0].message
    assert m.role == "assistant" and len(m.content) > 0
    assert r.usage.completion_tokens <= 16
    deltas, roles = [], []
    for chunk in client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16,
                                                temperature=0, stream=True):
        d = chunk.choices[0].delta
        roles.append(d.role)
        deltas.append(d.content or "")
    assert roles[0] == "assistant"
    assert "".join(deltas) == m.content, (deltas, m.content)


@check("logprobs: completions and chat")
def _():
    r = complete("The little dog", max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 6 and len(lp.token_logprobs) == 6 and len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == r.choices[0].text
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and chosen <= 0
        # Greedy: the chosen token is the most likely one.
        assert abs(max(top.values()) - chosen) < 1e-6
    assert lp.text_offset[0] == 0
    c = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


@check("stop strings")
def _():
    full = complete("Once upon a time", max_tokens=40, temperature=0).choices[0].text
    word = " named"
    assert word in full, full
    r = complete("Once upon a time", max_tokens=40, temperature=0, stop=[word, "zzz"])
    assert r.choices[0].text == full[: full.index(word)], (r.choices[0].text, full)
    assert r.choices[0].finish_reason == "stop"


@check("llama.cpp's repeat_last_n and samplers; a bad stage name is a 400")
def _():
    r = complete("One day", max_tokens=8, temperature=0.7, seed=3,
                 extra_body={"repeat_last_n": 16, "repetition_penalty": 1.3,
                             "samplers": ["top_k", "temperature"], "top_k": 5})
    assert r.usage.completion_tokens >= 1
    expect_error(400, "samplers", lambda: complete("x", extra_body={"samplers": ["warp_drive"]}))
    expect_error(400, "penalty_last_n", lambda: complete("x", extra_body={"repeat_last_n": -5}))


@check("prefix cache: a repeated system prompt is not computed again")
def _():
    system = "You are a storyteller. " * 20
    msgs = lambda q: [{"role": "system", "content": system}, {"role": "user", "content": q}]
    client.chat.completions.create(model=MODEL, messages=msgs("A cat?"), max_tokens=2, temperature=0)
    before = metrics()["tuili_prefix_cache_hits_total"]
    client.chat.completions.create(model=MODEL, messages=msgs("A dog?"), max_tokens=2, temperature=0)
    hits = metrics()["tuili_prefix_cache_hits_total"] - before
    assert hits >= 4, hits  # the system prompt spans several 16-token blocks


@check("n and seed")
def _():
    a = complete("One day", max_tokens=12, temperature=1.0, n=3, seed=7)
    b = complete("One day", max_tokens=12, temperature=1.0, n=3, seed=7)
    c = complete("One day", max_tokens=12, temperature=1.0, n=3, seed=8)
    ta = [ch.text for ch in sorted(a.choices, key=lambda x: x.index)]
    tb = [ch.text for ch in sorted(b.choices, key=lambda x: x.index)]
    tc = [ch.text for ch in sorted(c.choices, key=lambda x: x.index)]
    assert [ch.index for ch in sorted(a.choices, key=lambda x: x.index)] == [0, 1, 2]
    assert ta == tb, (ta, tb)
    assert ta != tc
    assert len(set(ta)) > 1, ta  # independent streams
    assert 3 <= a.usage.completion_tokens <= 36


@check("beam search (vLLM extension fields)")
def _():
    r = complete("Once upon a time", max_tokens=10, temperature=0, n=2,
                 extra_body={"use_beam_search": True, "best_of": 3, "length_penalty": 1.0})
    assert len(r.choices) == 2
    assert all(len(ch.text) > 0 for ch in r.choices)


@check("errors name the field")
def _():
    expect_error(400, "temperature", lambda: complete("x", temperature=5))
    expect_error(400, "temperature", lambda: complete("x", extra_body={"temperature": "hot"}))
    expect_error(400, "n", lambda: complete("x", n=0))
    expect_error(400, "logprobs", lambda: complete("x", logprobs=50))
    expect_error(400, "top_p", lambda: complete("x", top_p=0))
    expect_error(400, "max_tokens", lambda: complete("x", max_tokens=0))
    expect_error(400, "max_tokens", lambda: complete("x", max_tokens=10 ** 6))
    expect_error(400, "prompt", lambda: complete("word " * 3000))
    expect_error(400, "logit_bias", lambda: complete("x", logit_bias={"999999": 1}))
    expect_error(400, "top_logprobs", lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], top_logprobs=2))
    expect_error(400, "messages", lambda: client.chat.completions.create(model=MODEL, messages=[]))
    expect_error(404, "model", lambda: client.completions.create(model="gpt-9", prompt="x"))
    bad = openai.OpenAI(base_url=BASE + "/v1", api_key="wrong", max_retries=0)
    expect_error(401, None, lambda: bad.models.list())


@check("a client that disconnects mid-stream frees its request")
def _():
    before = metrics()['tuili_requests_total{outcome="cancelled"}']
    u = urllib.parse.urlparse(BASE)
    s = socket.create_connection((u.hostname, u.port))
    body = json.dumps({"model": MODEL, "prompt": "Once", "max_tokens": 2000, "stream": True,
                       "ignore_eos": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    got = b""
    while got.count(b"data:") < 3:
        got += s.recv(4096)
    s.close()
    for _ in range(200):
        m = metrics()
        if m['tuili_requests_total{outcome="cancelled"}'] > before and m["tuili_kv_blocks_used"] == 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"not cancelled: {m}")


PROMPTS = ["Once upon a time", "Lily and Ben went to the park", "The little dog", "One day, a big bird",
           "Tom had a red ball. He", "Sue liked to sing", "The sun was hot", "A cat sat"]


@check("32 concurrent streaming clients: none lost, each equal to the request alone, all blocks free")
def _():
    reqs = [(PROMPTS[i % len(PROMPTS)], 16 + (i * 7) % 48) for i in range(32)]
    alone = {r: complete(r[0], max_tokens=r[1], temperature=0).choices[0].text for r in set(reqs)}
    before = wait_idle()
    start = threading.Barrier(32)

    def stream(r):
        start.wait()
        c = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=300)
        text, finish = [], None
        for chunk in c.completions.create(model=MODEL, prompt=r[0], max_tokens=r[1], temperature=0,
                                          stream=True):
            text.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        return "".join(text), finish

    with ThreadPoolExecutor(32) as ex:
        outs = list(ex.map(stream, reqs))
    assert len(outs) == 32
    for r, (text, finish) in zip(reqs, outs):
        assert finish in ("length", "stop"), finish
        assert text == alone[r], (r, text, alone[r])
    m = wait_idle()
    assert m["tuili_kv_blocks_used"] == 0
    # Batching happened: many sequences' tokens per forward pass on average.
    steps = m["tuili_steps_total"] - before["tuili_steps_total"]
    toks = m["tuili_batch_tokens_total"] - before["tuili_batch_tokens_total"]
    assert toks / steps > 2, (toks, steps)


print("all openai-client checks passed", flush=True)
