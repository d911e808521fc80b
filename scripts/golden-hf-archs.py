#!/usr/bin/env python3
"""Reference logits of tiny random Hugging Face models, for tests/golden/hf-archs.json.

torch (and so transformers) does not install on the CI machines, so the forward pass is a
numpy float64 re-implementation that follows transformers' modeling code line by line
(models/llama/modeling_llama.py: LlamaRMSNorm, rotate_half / apply_rotary_pos_emb,
repeat_kv, eager attention with a causal mask, LlamaMLP; Mistral is Llama's code; Qwen2 adds
the q/k/v biases; Qwen3 adds q_norm / k_norm on each head before RoPE and an explicit head_dim;
Phi-3 fuses qkv_proj and gate_up_proj and may rotate only part of each head;
models/gemma, models/gemma2: √hidden embedding scale, (1 + w) RMSNorm, tanh-GELU gate,
Gemma 2's sandwich norms, query_pre_attn_scalar and soft-capping of scores and logits).

The weights are not stored: every value comes from an integer generator (FNV-1a of the tensor
name, then SplitMix64 per element, 20-bit uniforms — exact in f32) that the Rust test
reproduces to write the same safetensors checkpoint.

    python3 scripts/golden-hf-archs.py > tests/golden/hf-archs.json
"""
import json
import sys

import numpy as np

M64 = (1 << 64) - 1


def splitmix(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def fnv1a(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def tensor(name, shape, norm=False):
    n = int(np.prod(shape))
    h = fnv1a(name)
    u = np.array([(splitmix(h ^ ((i * 0x9E3779B97F4A7C15) & M64)) >> 44) / float(1 << 20) for i in range(n)])
    v = 0.5 + u * 0.5 if norm else (u - 0.5) * 0.25
    return v.astype(np.float32).astype(np.float64).reshape(shape)


CONFIGS = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128, rms_norm_eps=1e-5,
                  rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=False),
    "llama31": dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=128, rms_norm_eps=1e-5,
                    rope_theta=500000.0, max_position_embeddings=256, tie_word_embeddings=False,
                    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                      high_freq_factor=4.0, original_max_position_embeddings=32)),
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, vocab_size=128, rms_norm_eps=1e-6,
                    rope_theta=1000000.0, max_position_embeddings=256, sliding_window=3,
                    tie_word_embeddings=False),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128, rms_norm_eps=1e-6,
                  rope_theta=1000000.0, max_position_embeddings=256, tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=128,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=256,
                  tie_word_embeddings=True),
    "phi3": dict(model_type="phi3", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=128, rms_norm_eps=1e-5,
                 rope_theta=10000.0, max_position_embeddings=256, partial_rotary_factor=0.5,
                 tie_word_embeddings=False),
    "gemma": dict(model_type="gemma", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=32, vocab_size=128,
                  rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=256,
                  hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
    "gemma2": dict(model_type="gemma2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=128,
                   rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=256,
                   query_pre_attn_scalar=24, attn_logit_softcapping=1.0,
                   final_logit_softcapping=2.0, sliding_window=3,
                   hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
}
TOKENS = [1, 5, 9, 23, 42, 7, 100, 3]


def shapes(c):
    """HF tensor name → shape, as transformers' state_dict has them."""
    hd = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
    e, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out = {"model.embed_tokens.weight": ([v, e], False), "model.norm.weight": ([e], True)}
    if not c["tie_word_embeddings"]:
        out["lm_head.weight"] = ([v, e], False)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = ([e], True)
        out[p + "post_attention_layernorm.weight"] = ([e], True)
        if c["model_type"] == "phi3":
            out[p + "self_attn.qkv_proj.weight"] = ([q + 2 * kv, e], False)
            out[p + "mlp.gate_up_proj.weight"] = ([2 * f, e], False)
        else:
            out[p + "self_attn.q_proj.weight"] = ([q, e], False)
            out[p + "self_attn.k_proj.weight"] = ([kv, e], False)
            out[p + "self_attn.v_proj.weight"] = ([kv, e], False)
            out[p + "mlp.gate_proj.weight"] = ([f, e], False)
            out[p + "mlp.up_proj.weight"] = ([f, e], False)
        out[p + "self_attn.o_proj.weight"] = ([e, q], False)
        out[p + "mlp.down_proj.weight"] = ([e, f], False)
        if c["model_type"] == "qwen2":
            out[p + "self_attn.q_proj.bias"] = ([q], False)
            out[p + "self_attn.k_proj.bias"] = ([kv], False)
            out[p + "self_attn.v_proj.bias"] = ([kv], False)
        if c["model_type"] == "qwen3":
            out[p + "self_attn.q_norm.weight"] = ([hd], True)
            out[p + "self_attn.k_norm.weight"] = ([hd], True)
        if c["model_type"] == "gemma2":
            out[p + "pre_feedforward_layernorm.weight"] = ([e], True)
            out[p + "post_feedforward_layernorm.weight"] = ([e], True)
    return out


def rms_norm(x, w, eps, gemma=False):
    # LlamaRMSNorm: hidden * rsqrt(mean(hidden², -1) + eps), then weight *;
    # GemmaRMSNorm multiplies by (1 + weight).
    var = np.mean(x * x, axis=-1, keepdims=True)
    return ((1.0 + w) if gemma else w) * (x / np.sqrt(var + eps))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def forward(c, W, ids):
    hd = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
    nh, nkv, eps = c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
    T = len(ids)
    ty = c["model_type"]
    gemma = ty in ("gemma", "gemma2")
    norm = lambda x, w: rms_norm(x, w, eps, gemma)
    x = W["model.embed_tokens.weight"][ids]                      # [T, e]
    if gemma:
        x = x * np.float64(np.float32(c["hidden_size"] ** 0.5))  # normalizer, in the dtype
    rot = int(hd * c.get("partial_rotary_factor", 1.0))   # rotary_dim
    inv_freq = 1.0 / (c["rope_theta"] ** (np.arange(0, rot, 2) / rot))
    rs = c.get("rope_scaling")
    if rs and rs.get("rope_type") == "llama3":                   # _compute_llama3_parameters
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * np.pi / inv_freq
        inv_llama = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
        is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv_freq = np.where(is_medium, smoothed, inv_llama)
    freqs = np.outer(np.arange(T), inv_freq)                     # [T, hd/2]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = norm(x, W[p + "input_layernorm.weight"])
        lin = lambda name, inp: inp @ W[p + name + ".weight"].T + (W[p + name + ".bias"] if p + name + ".bias" in W else 0)
        if c["model_type"] == "phi3":
            qkv = lin("self_attn.qkv_proj", h)
            qp, kp = nh * hd, nh * hd + nkv * hd
            q, k, v = qkv[:, :qp], qkv[:, qp:kp], qkv[:, kp:]
        else:
            q, k, v = lin("self_attn.q_proj", h), lin("self_attn.k_proj", h), lin("self_attn.v_proj", h)
        q = q.reshape(T, nh, hd).transpose(1, 0, 2)
        k = k.reshape(T, nkv, hd).transpose(1, 0, 2)
        v = v.reshape(T, nkv, hd).transpose(1, 0, 2)
        if c["model_type"] == "qwen3":
            q = rms_norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, W[p + "self_attn.k_norm.weight"], eps)
        # apply_rotary_pos_emb on the first rotary_dim dims (Phi-3: partial_rotary_factor).
        q = np.concatenate([q[..., :rot] * cos + rotate_half(q[..., :rot]) * sin, q[..., rot:]], -1)
        k = np.concatenate([k[..., :rot] * cos + rotate_half(k[..., :rot]) * sin, k[..., rot:]], -1)
        k = np.repeat(k, nh // nkv, axis=0)                        # repeat_kv
        v = np.repeat(v, nh // nkv, axis=0)
        scaling = c["query_pre_attn_scalar"] ** -0.5 if ty == "gemma2" else hd ** -0.5
        s = q @ k.transpose(0, 2, 1) * scaling
        if c.get("attn_logit_softcapping"):
            cap = c["attn_logit_softcapping"]
            s = np.tanh(s / cap) * cap
        # Sliding window (Mistral: every layer; Gemma 2: layers 0, 2, …): position j is
        # visible from i when i − j < sliding_window.
        w = c.get("sliding_window")
        if w and (ty == "mistral" or (ty == "gemma2" and i % 2 == 0)):
            jj, ii = np.meshgrid(np.arange(T), np.arange(T))
            s = np.where(ii - jj >= w, -np.inf, s)
        s = s + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(T, nh * hd)
        o = a @ W[p + "self_attn.o_proj.weight"].T
        if ty == "gemma2":                                        # sandwich norms
            x = x + norm(o, W[p + "post_attention_layernorm.weight"])
            h = norm(x, W[p + "pre_feedforward_layernorm.weight"])
        else:
            x = x + o
            h = norm(x, W[p + "post_attention_layernorm.weight"])
        if c["model_type"] == "phi3":
            gu = h @ W[p + "mlp.gate_up_proj.weight"].T        # gate, up = chunk(2, dim=-1)
            g, u = gu[:, :c["intermediate_size"]], gu[:, c["intermediate_size"]:]
        else:
            g = h @ W[p + "mlp.gate_proj.weight"].T
            u = h @ W[p + "mlp.up_proj.weight"].T
        act = gelu_tanh(g) if gemma else g / (1 + np.exp(-g))
        d = (act * u) @ W[p + "mlp.down_proj.weight"].T
        if ty == "gemma2":
            d = norm(d, W[p + "post_feedforward_layernorm.weight"])
        x = x + d
    x = norm(x, W["model.norm.weight"])
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    logits = x @ head.T
    if c.get("final_logit_softcapping"):
        cap = c["final_logit_softcapping"]
        logits = np.tanh(logits / cap) * cap
    return logits


def main():
    out = {"generator": "scripts/golden-hf-archs.py", "tokens": TOKENS, "models": {}}
    for name, c in CONFIGS.items():
        W = {k: tensor(k, s, norm) for k, (s, norm) in shapes(c).items()}
        logits = forward(c, W, TOKENS)
        out["models"][name] = {"config": c, "logits": [[round(float(v), 9) for v in row] for row in logits]}
    json.dump(out, sys.stdout, separators=(",", ":"))
    print()


if __name__ == "__main__":
    main()
