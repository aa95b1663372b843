"""A/B of the CUDA backward (or, --kind fwd, forward) across two ssmgen trees, one process each, in the same device call:
for use when the kernels' parameters or buffers change, so that the old kernel cannot run under
the new launcher (bwd_ab.py's way). On the suite shapes at the shipped records' configs (read
from this repository's record file, whatever their template hash): backward kernel time (CUDA
events around backend.backward, L2 flushed before each run, median of REPS, vector variant where
the call allows, as in normal calls; bwd_ab's timing and record lookup). The first run saves
its gradients (forward: its output) (--save DIR); the second compares every one with them
(--against DIR) and reports NaN.
Usage: PYTHONPATH=OLD_TREE python3 benchmarks/bwd_ab_proc.py --save /tmp/ab > old.json
       python3 benchmarks/bwd_ab_proc.py --against /tmp/ab > new.json"""
import argparse
import json
import os
import sys

import torch

import ssmgen
from ssmgen.backends import cuda_backend as cb
from ssmgen.suite import scan_shapes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bwd_ab import median_ms, prepared, rel, timed  # noqa: E402  (the same timing and record lookup)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--save")
    ap.add_argument("--against")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--kind", default="bwd", choices=["fwd", "bwd"])
    a = ap.parse_args()
    print(json.dumps({"ssmgen": os.path.dirname(ssmgen.__file__)}), flush=True)
    for shape in scan_shapes():
        if a.shapes and shape["name"] not in a.shapes.split(","):
            continue
        call, cfg, dout, ckpt = prepared(shape)
        k = getattr(cfg, a.kind)
        row = {"shape": shape["name"], a.kind: cb.kernel_name(call.spec, k, a.kind)}
        if a.kind == "bwd":
            row["ms"], g = timed(call, cfg, ckpt, dout)
        else:
            row["ms"], res = median_ms(lambda: cb.forward(call, cfg, False))
            g = {"out": res[0]}
        g = {n: v for n, v in g.items() if torch.is_tensor(v)}
        row["nan"] = any(torch.isnan(v).any().item() for v in g.values())
        path = lambda d: os.path.join(d, f"{shape['name']}_{a.kind}.pt")  # noqa: E731
        if a.save:
            os.makedirs(a.save, exist_ok=True)
            torch.save({n: v.cpu() for n, v in g.items()}, path(a.save))
        if a.against:
            old = torch.load(path(a.against))
            row["rel_vs_old"] = {n: rel(g[n].cpu(), old[n]) for n in old}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
