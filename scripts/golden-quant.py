#!/usr/bin/env python3
"""llama.cpp's quantizer output for tests/golden/quant-llamacpp.json.

Calls ggml's own `ggml_quantize_chunk` (no importance matrix, as llama-quantize without
--imatrix) from the libggml-base that PyPI's llama-cpp-python 0.3.36 builds from source (clang,
GGML_NATIVE), on rows made by an integer generator that tuili's test reproduces exactly.

    ~/.cache/tuili/llamacpp-venv/bin/python scripts/golden-quant.py > tests/golden/quant-llamacpp.json
"""
import ctypes
import glob
import json
import os
import struct
import sys

import llama_cpp

LIB = glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))[0]
ggml = ctypes.CDLL(LIB)
ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p,
                                     ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
ggml.ggml_row_size.restype = ctypes.c_size_t
ggml.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
         "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
ROWS, COLS = 8, 512
M64 = (1 << 64) - 1


def splitmix(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def data():
    """Row r, column c: uniform in [-2, 2) on a 2^-22 grid, times 2^(r % 5 - 2), with an
    outlier (×8) where the low hash byte is 0; row 3 all zeros, row 5 constant 0.25. Every value
    is exact in f32, so both sides start from the same bits."""
    out = []
    for r in range(ROWS):
        for c in range(COLS):
            if r == 3:
                v = 0.0
            elif r == 5:
                v = 0.25
            else:
                z = splitmix(r * COLS + c)
                v = ((z >> 40) / float(1 << 24) - 0.5) * 4.0 * 2.0 ** (r % 5 - 2)
                if z & 0xFF == 0:
                    v *= 8.0
            out.append(v)
    return out


def main():
    x = data()
    src = (ctypes.c_float * len(x))(*x)
    result = {"generator": "scripts/golden-quant.py", "rows": ROWS, "cols": COLS, "types": {}}
    for name, t in TYPES.items():
        size = ggml.ggml_row_size(t, COLS) * ROWS
        dst = ctypes.create_string_buffer(size)
        n = ggml.ggml_quantize_chunk(t, src, dst, 0, ROWS, COLS, None)
        assert n == size, (name, n, size)
        result["types"][name] = dst.raw.hex()
    json.dump(result, sys.stdout, indent=0)
    print()


if __name__ == "__main__":
    main()
