#!/usr/bin/env python
"""Latency of the original, DC-ViT and block-dropped structures at equal MACs (a thin wrapper of `dcvit bench`).

Examples (the BENCHMARKS.md entries):
    python tools/bench_latency.py --model vit_base_patch16_224 --drop 1 2 3 --batch-sizes 1 --repeats 5 --threads 1
    python tools/bench_latency.py --model vit_base_patch16_224 --drop 1 2 3 --batch-sizes 32 --repeats 5 --threads 2
"""
import sys

from dcvit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
