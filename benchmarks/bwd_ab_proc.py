"""A/B of the CUDA backward across two ssmgen trees, one process each, in the same device call:
for use when the kernels' parameters or buffers change, so that the old kernel cannot run under
the new launcher (bwd_ab.py's way). On the suite shapes at the shipped records' configs (read
from this repository's record file, whatever their template hash): backward kernel time (CUDA
events around backend.backward, L2 flushed before each run, median of REPS, vector variant where
the call allows, as in normal calls). The first run saves its gradients (--save DIR); the second
compares every gradient with them (--against DIR) and reports NaN.
Usage: PYTHONPATH=OLD_TREE python3 benchmarks/bwd_ab_proc.py --save /tmp/ab > old.json
       python3 benchmarks/bwd_ab_proc.py --against /tmp/ab > new.json"""
import argparse
import json
import os
import statistics

import torch

import ssmgen
from ssmgen import autotune
from ssmgen.backends import cuda_backend as cb
from ssmgen.inputs import normalize
from ssmgen.suite import make_inputs, scan_shapes

REPS = 20
RECORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "autotune_cache",
                       "nvidia_h100_80gb_hbm3.json")


def record_config(call):
    """The shipped record's (chunk_len, ScanConfig) for this shape, whatever its template hash."""
    for r in json.load(open(RECORDS))["records"]:
        if (r.get("backend") == "cuda" and "bwd_ms" in r
                and r["spec_key"] == autotune.tuning_key(call.spec)
                and r["shape"] == dict(batch=call.batch, dim=call.dim, seqlen=call.seqlen)):
            c = dict(r["config"])
            chunk = c.pop("chunk_len")
            return chunk, cb.ScanConfig.from_dict(c)
    raise LookupError(call.spec)


def timed(call, cfg, ckpt, dout, flush):
    g = cb.backward(call, cfg, ckpt, dout)   # compile, warm
    ts = []
    for _ in range(REPS):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        cb.backward(call, cfg, ckpt, dout)
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts), g


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--save")
    ap.add_argument("--against")
    ap.add_argument("--shapes", default="")
    a = ap.parse_args()
    flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")
    print(json.dumps({"ssmgen": os.path.dirname(ssmgen.__file__)}), flush=True)
    for shape in scan_shapes():
        if a.shapes and shape["name"] not in a.shapes.split(","):
            continue
        x = make_inputs(shape)
        chunk, cfg = record_config(normalize(*x, delta_softplus=True))
        call = normalize(*x, delta_softplus=True, chunk_len=chunk)
        torch.manual_seed(0)
        dout = torch.randn_like(call.u)
        _, _, ckpt = cb.forward(call, cfg, True)
        row = {"shape": shape["name"], "bwd": cb.kernel_name(call.spec, cfg.bwd, "bwd")}
        row["ms"], g = timed(call, cfg, ckpt, dout, flush)
        g = {n: v for n, v in g.items() if torch.is_tensor(v)}
        row["nan"] = any(torch.isnan(v).any().item() for v in g.values())
        path = lambda d: os.path.join(d, shape["name"] + ".pt")  # noqa: E731
        if a.save:
            os.makedirs(a.save, exist_ok=True)
            torch.save({n: v.cpu() for n, v in g.items()}, path(a.save))
        if a.against:
            old = torch.load(path(a.against))
            row["rel_vs_old"] = {n: rel(g[n].cpu(), old[n]) for n in old}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
