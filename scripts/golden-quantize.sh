#!/usr/bin/env bash
# llama-quantize's output on the synthetic `test` model, for tests/golden/quantize-llamacpp.json:
# per file type, every tensor's type and one SHA-256 over all tensor bytes, tensors taken in name
# order (llama-quantize writes them in its loader's order, tuili in the input's).
# llama-quantize is built as scripts/golden-perplexity.sh describes; gguf-py comes with
# llama-cpp-python's venv.
set -euo pipefail
TOOLS=${TOOLS:-$HOME/.cache/tuili/llamacpp-tools}
PY=${PY:-$HOME/.cache/tuili/llamacpp-venv/bin/python}
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo run --release -q -- synth --shape test --type f32 --out "$tmp/f32.gguf"
types="Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K"
for t in $types; do
    "$TOOLS/bin/llama-quantize" "$tmp/f32.gguf" "$tmp/$t.gguf" "$t" 2 > "$tmp/$t.log" 2>&1
done
"$PY" - "$tmp" $types > tests/golden/quantize-llamacpp.json <<'PYEOF'
import hashlib, json, sys
import gguf
tmp, types = sys.argv[1], sys.argv[2:]
out = {"generator": "scripts/golden-quantize.sh", "input": "tuili synth --shape test --type f32 (seed 42)", "types": {}}
for t in types:
    r = gguf.GGUFReader(f"{tmp}/{t}.gguf")
    h = hashlib.sha256()
    for ten in sorted(r.tensors, key=lambda t: t.name):
        h.update(ten.data.tobytes())
    out["types"][t] = {"tensors": {ten.name: ten.tensor_type.name for ten in r.tensors}, "sha256": h.hexdigest()}
json.dump(out, sys.stdout, indent=1, sort_keys=True)
print()
PYEOF
wc -c tests/golden/quantize-llamacpp.json
