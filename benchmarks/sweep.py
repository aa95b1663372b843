"""Config sweep of the Triton kernels on one suite shape: forward and backward timed separately.

Usage: python benchmarks/sweep.py --shape m1_130m_bf16 [--out DIR]
Answers where the time goes before the tuner exists: tile shape, warps, chunk length.
"""
import argparse
import itertools
import json
import os

import torch
from triton.testing import do_bench

from ssmgen.backends import triton_backend as tb
from ssmgen.inputs import normalize

from ssmgen.suite import make_inputs, scan_shapes


def time_config(x, dout, chunk_len, kcfg, kind):
    call = normalize(*x, delta_softplus=True, chunk_len=chunk_len)
    cfg = tb.ScanConfig(kcfg, kcfg)
    if kind == "fwd":
        fn = lambda: tb.forward(call, cfg, save_ckpt=False)  # noqa: E731
    else:
        _, _, ckpt = tb.forward(call, cfg, save_ckpt=True)
        fn = lambda: tb.backward(call, cfg, ckpt, dout)  # noqa: E731
    fn()
    return do_bench(fn, warmup=10, rep=60, return_mode="median")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="m1_130m_bf16")
    p.add_argument("--out", default=".")
    a = p.parse_args()
    s = next(r for r in scan_shapes() if r["name"] == a.shape)
    x = make_inputs(s)
    dout = torch.randn_like(x[0])
    rows = []
    space = {
        "fwd": itertools.product([256], [1, 2, 4, 8], [16, 32, 64], [2, 4, 8]),
        "bwd": itertools.product([64, 256], [1, 2, 4], [16, 32, 64], [2, 4, 8]),
    }
    for kind, combos in space.items():
        for chunk, bd, bl, w in combos:
            k = tb.KernelConfig(block_d=bd, block_l=bl, num_warps=w)
            try:
                ms = time_config(x, dout, chunk, k, kind)
            except Exception as e:  # out of resources etc.: record and go on
                ms = float("nan")
                print(kind, chunk, k, "failed:", str(e)[:200])
            rows.append(dict(kind=kind, chunk_len=chunk, **k.__dict__, ms=ms))
            print(json.dumps(rows[-1]), flush=True)
    os.makedirs(a.out, exist_ok=True)
    json.dump(rows, open(os.path.join(a.out, f"sweep_{a.shape}.json"), "w"), indent=1)
    for kind in ("fwd", "bwd"):
        best = sorted((r for r in rows if r["kind"] == kind and r["ms"] == r["ms"]),
                      key=lambda r: r["ms"])[:8]
        print(f"best {kind}:")
        for r in best:
            print("  ", r)


if __name__ == "__main__":
    main()
