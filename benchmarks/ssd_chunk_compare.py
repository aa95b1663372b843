"""GPU: the SSD default config (the chunk form, backends/triton_ssd_chunk.py, where it takes
it) against the walk and mamba-ssm, through the public call, in one process:
forward+backward (do_bench medians, profiled kernel sums, peak memory;
ssd_sweep_common.compare) and the inference forward (no grad), on the suite's ssd shapes.
Also the relative difference of out and every gradient between the default and the walk.

Usage: python benchmarks/ssd_chunk_compare.py OUT.json [shape names...]
Environment: PEER (1: mamba-ssm too), EXTRA (more configs: encode() texts, ';'-separated),
OVER (more configs: each shape's default with fields changed, e.g. "dz_walk=1,v_cdbc=1;
v_cdbc=1": ';'-separated sets of name=int).
"""
import dataclasses
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssd_sweep_common import (compare, compile_ahead, empty_call, forward_only,  # noqa: E402
                              shape_inputs)

import ssmgen  # noqa: E402
from ssmgen.backends import triton_ssd as ts  # noqa: E402
from ssmgen.bench import peer_import  # noqa: E402
from ssmgen.ssd_kernels import decode_config, spec_of  # noqa: E402
from ssmgen.suite import load  # noqa: E402


def configs(s, c):
    """The walk, the default, the configs of EXTRA (encode() texts, ';'-separated) and of OVER
    (the shape's default with fields changed: "name=int,name=int;...")."""
    walk = ts.walk_config(spec_of(c), c.batch, c.heads)
    out = {"walk": walk, "default": None}
    for i, text in enumerate(t for t in os.environ.get("EXTRA", "").split(";") if t):
        out[f"extra{i}"] = decode_config(text)
    default = ts.default_config(spec_of(c), c.batch, c.heads)
    for text in (t for t in os.environ.get("OVER", "").split(";") if t):
        change = {k: int(v) for k, v in (f.split("=") for f in text.split(","))}
        out[text] = dataclasses.replace(default, **change)
    return out


def grads(s, x, dout, cfg):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    out = ssmgen.mamba_chunk_scan_combined(chunk_size=s["chunk"], dt_softplus=True,
                                           backend="triton", config=cfg, **leaves)
    g = torch.autograd.grad(out, list(leaves.values()), dout)
    return {"out": out, **{"d" + k: v for k, v in zip(x, g)}}


def main():
    out_path = sys.argv[1]
    names = sys.argv[2:] or [s["name"] for s in load()["ssd"]]
    peer = peer_import("mamba_ssm.ops.triton.ssd_combined") if os.environ.get("PEER") == "1" \
        else None
    res = {"gpu": torch.cuda.get_device_name()}
    by_name = {s["name"]: s for s in load()["ssd"]}
    shapes = [by_name[n] for n in names]  # in the order named (a timeout keeps the first)
    # every config compiled first, in parallel processes (the calls below find Triton's cache)
    jobs = []
    for s in shapes:
        c = empty_call(s)
        cfgs = dict(configs(s, c), default=ts.default_config(spec_of(c), c.batch, c.heads))
        jobs += [(s["name"], cfg.encode()) for cfg in cfgs.values()]
    compile_ahead(jobs)
    for s in shapes:
        print(f"=== {s['name']}", flush=True)
        x, dout, c, _ = shape_inputs(s)
        cfgs = configs(s, c)
        print("  default: " + repr(ts.default_config(spec_of(c), s["batch"], s["heads"])),
              flush=True)
        a, b = grads(s, x, dout, cfgs["walk"]), grads(s, x, dout, cfgs["default"])
        diff = {k: ((b[k].double() - a[k].double()).norm() / a[k].double().norm()).item()
                for k in a}
        print("  default vs walk: " + " ".join(f"{k} {v:.1e}" for k, v in diff.items()), flush=True)
        fwd = forward_only(s, x, cfgs, peer)
        cmp = compare(s, x, dout, cfgs, peer)
        res[s["name"]] = {"configs": {n: repr(c) for n, c in cfgs.items()}, "fwd_ms": fwd,
                          "fb": cmp, "default_vs_walk": diff}
        json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
