#!/usr/bin/env python3
"""Logits of transformers itself, for tests/golden/transformers.json.

Every Llama-family architecture tuili reads (llama, llama with Llama 3.1 RoPE scaling, mistral,
qwen2, qwen3, phi3, gemma, gemma2) is built by transformers from its own config class, given
the weights of `golden-hf-archs.py`'s integer generator (which the Rust test reproduces), saved
with `save_pretrained`, and run in float32 with eager attention. The golden keeps:

- `config`: the config.json transformers wrote — transformers 5 writes `rope_parameters`
  (with `rope_theta`, `rope_type` and the scaling's keys) instead of `rope_theta` + `rope_scaling`;
- `legacy_config`: the same settings in the older form (top-level `rope_theta`, `rope_scaling`),
  which published folders still carry;
- `logits`: transformers' logits at every position of `tokens`.

torch and transformers come from PyPI into a venv outside the repository (about 5.6 GB):

    python3 -m venv ../venv-tf && ../venv-tf/bin/pip install torch transformers safetensors numpy
    ../venv-tf/bin/python scripts/golden-transformers.py > tests/golden/transformers.json

CI never runs this; the test (`crates/engine/tests/hf_archs.rs`) only reads its output.
"""
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("archs", os.path.join(HERE, "golden-hf-archs.py"))
archs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(archs)


def legacy(cfg):
    """transformers 5's `rope_parameters` written back as `rope_theta` + `rope_scaling`."""
    c = dict(cfg)
    rp = dict(c.pop("rope_parameters"))
    c["rope_theta"] = rp.pop("rope_theta")
    if "partial_rotary_factor" in rp:
        c["partial_rotary_factor"] = rp.pop("partial_rotary_factor")
    if rp.get("rope_type", "default") != "default":
        c["rope_scaling"] = rp
    return c


def main():
    torch.manual_seed(0)
    out = {"generator": "scripts/golden-transformers.py", "transformers": transformers.__version__,
           "tokens": archs.TOKENS, "models": {}}
    for name, kw in archs.CONFIGS.items():
        kw = dict(kw)
        model_type = kw.pop("model_type")
        config = AutoConfig.for_model(model_type, **kw, bos_token_id=1, eos_token_id=2,
                                      pad_token_id=None)
        config._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        c = dict(kw, model_type=model_type)
        state = {n: torch.from_numpy(archs.tensor(n, s, norm).astype(np.float32))
                 for n, (s, norm) in archs.shapes(c).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied heads are the embedding; rotary buffers are computed, not loaded.
        missing = [m for m in missing if m != "lm_head.weight" and "rotary" not in m]
        assert not missing and not unexpected, (name, missing, unexpected)
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            with open(os.path.join(d, "config.json")) as f:
                saved = json.load(f)
        assert "rope_parameters" in saved, name
        with torch.no_grad():
            logits = model(torch.tensor([archs.TOKENS])).logits[0]
        out["models"][name] = {
            "config": saved,
            "legacy_config": legacy(saved),
            "logits": [[round(float(x), 6) for x in row] for row in logits],
        }
        print(name, file=sys.stderr)
    json.dump(out, sys.stdout, indent=None, separators=(",", ":"))
    print()


if __name__ == "__main__":
    main()
