#!/usr/bin/env python3
"""Compares two GGUF files tensor by tensor: type, shape and bytes (e.g. tuili quantize's
output against llama-quantize's for the same input and type), and the metadata keys.

    ~/.cache/tuili/llamacpp-venv/bin/python scripts/compare-quantize.py A.gguf B.gguf
Exit status 0 when every tensor is identical.
"""
import sys

import gguf


def load(path):
    r = gguf.GGUFReader(path)
    return r, {t.name: t for t in r.tensors}


def main():
    a_path, b_path = sys.argv[1], sys.argv[2]
    ra, a = load(a_path)
    rb, b = load(b_path)
    same, diff = 0, []
    for name in a.keys() | b.keys():
        if name not in a or name not in b:
            diff.append(f"{name}: only in {'A' if name in a else 'B'}")
            continue
        ta, tb = a[name], b[name]
        if ta.tensor_type != tb.tensor_type or list(ta.shape) != list(tb.shape):
            diff.append(f"{name}: {ta.tensor_type.name}{list(ta.shape)} vs {tb.tensor_type.name}{list(tb.shape)}")
        elif bytes(ta.data.tobytes()) != bytes(tb.data.tobytes()):
            diff.append(f"{name}: same type {ta.tensor_type.name}, different bytes")
        else:
            same += 1
    ka = {f.name for f in ra.fields.values()}
    kb = {f.name for f in rb.fields.values()}
    extra = sorted(ka ^ kb)
    print(f"{same} of {len(a.keys() | b.keys())} tensors identical"
          + (f"; metadata keys in one file only: {extra}" if extra else ""))
    for d in sorted(diff):
        print("  " + d)
    sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
