"""GPU: the Triton SSD kernels' sequence splits on the suite's `ssd` shapes: forward and
backward pass 1 (each with its pre-pass) per (block_p, splits), the output against one
segment's (relative norm of the difference). Medians of triton.testing.do_bench.

Usage: python benchmarks/ssd_split_sweep.py OUT.json [shape names...]
"""
import dataclasses
import json
import sys

import torch
from triton.testing import do_bench

from ssmgen.backends import triton_ssd as ts
from ssmgen.ssd import normalize_ssd
from ssmgen.ssd_kernels import spec_of
from ssmgen.suite import load

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ssd_bench import make_inputs  # noqa: E402

GRID = [(16, 1), (16, 2), (16, 4), (16, 8), (16, 16), (32, 4), (32, 8), (32, 16), (64, 8),
        (64, 16), (64, 32)]


def main(out_path, names=()):
    bench = lambda f: do_bench(f, warmup=5, rep=40, return_mode="median")  # noqa: E731
    res = {"device": torch.cuda.get_device_name(), "shapes": {}}
    for s in load()["ssd"]:
        if names and s["name"] not in names:
            continue
        x = make_inputs(s)
        dout = torch.randn_like(x["x"])
        c = normalize_ssd(chunk_size=s["chunk"], dt_softplus=True, **x)
        spec = spec_of(c)
        base = ts.default_config(spec, c.batch, c.heads)
        ref, _, ck = ts.forward(c, spec, dataclasses.replace(base, splits=1))
        dref, _ = ts.backward_states(c, spec, dataclasses.replace(base, splits=1), ck.shape[2], dout)
        rows = [{"default": base.to_dict()}]
        for bp, sp in GRID:
            cfg = dataclasses.replace(base, block_p=bp, splits=sp)
            r = {"block_p": bp, "splits": sp}
            try:
                out, _, ckpt = ts.forward(c, spec, cfg)
                r["out_rel_vs_one_segment"] = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                d, _ = ts.backward_states(c, spec, cfg, ckpt.shape[2], dout)
                r["dckpt_rel_vs_one_segment"] = ((d.float() - dref.float()).norm() / dref.float().norm()).item()
                r["fwd_ms"] = bench(lambda: ts.forward(c, spec, cfg))
                r["dstate_ms"] = bench(lambda: ts.backward_states(c, spec, cfg, ckpt.shape[2], dout))
                del ckpt, d
            except Exception as e:
                r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rows.append(r)
            print(f"  {s['name']} {r}", flush=True)
        res["shapes"][s["name"]] = rows
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
