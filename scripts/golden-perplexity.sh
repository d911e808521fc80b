#!/usr/bin/env bash
# llama.cpp's perplexity of stories260K on the fixture texts, for tests/golden/perplexity-llamacpp.json.
#
# llama-perplexity is built from the llama.cpp source vendored in PyPI's llama-cpp-python sdist
# (0.3.36), with clang:
#   pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36 && tar xf llama_cpp_python-0.3.36.tar.gz
#   cd llama_cpp_python-0.3.36/vendor/llama.cpp
#   CC=clang CXX=clang++ cmake -B $TOOLS -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
#       -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF
#   cmake --build $TOOLS --target llama-perplexity llama-quantize -j2
set -euo pipefail
TOOLS=${TOOLS:-$HOME/.cache/tuili/llamacpp-tools}
cd "$(dirname "$0")/.."
F=../shared/fixtures
M=$F/models/stories260K/stories260K.gguf
run() { # text ctx chunks
    "$TOOLS/bin/llama-perplexity" -m "$M" -f "$F/text/$1" -c "$2" -b "$2" --chunks "$3" -t 2 2>&1 |
        sed -n 's/.*Final estimate: PPL = \([0-9.]*\) +\/- \([0-9.]*\).*/\1 \2/p'
}
{
    echo '{"generator": "scripts/golden-perplexity.sh", "llama_cpp": "llama-cpp-python 0.3.36 vendored llama.cpp, clang, GGML_NATIVE", "model": "stories260K.gguf", "cases": ['
    sep=""
    for c in "tinyshakespeare.txt 256 20" "tinystories_sample.txt 128 -1" "wikitext-2-raw-test.hfsplit.crlf.raw 512 4"; do
        set -- $c
        read -r ppl err < <(run "$1" "$2" "$3")
        echo "$sep{\"text\": \"$1\", \"ctx\": $2, \"chunks\": $3, \"ppl\": $ppl, \"stderr\": $err}"
        sep=","
    done
    echo ']}'
} > tests/golden/perplexity-llamacpp.json
cat tests/golden/perplexity-llamacpp.json
