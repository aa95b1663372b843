"""GPU: the Triton SSD kernels' sequence splits on the suite's `ssd` shapes: forward and
backward pass 1 (each with its pre-pass) per (block_p, splits), the output against one
segment's (relative norm of the difference). Medians of triton.testing.do_bench.

Usage: python benchmarks/ssd_split_sweep.py OUT.json [shape names...]
"""
import dataclasses
import sys

import torch

from ssmgen.backends import triton_ssd as ts
from ssmgen.ssd import normalize_ssd
from ssmgen.ssd_kernels import spec_of

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ssd_bench import make_inputs, sweep_shapes, time_fwd_dstate  # noqa: E402

GRID = [(16, 1), (16, 2), (16, 4), (16, 8), (16, 16), (32, 4), (32, 8), (32, 16), (64, 8),
        (64, 16), (64, 32)]


def per_shape(s, bench):
    x = make_inputs(s)
    dout = torch.randn_like(x["x"])
    c = normalize_ssd(chunk_size=s["chunk"], dt_softplus=True, **x)
    spec = spec_of(c)
    base = ts.walk_config(spec, c.batch, c.heads)
    one = dataclasses.replace(base, splits=1)
    ref, _, ck, _ = ts.forward(c, spec, one)
    dref, _, _ = ts.backward_states(c, spec, one, ck.shape[2], dout)
    del ck
    rows = [{"default": base.to_dict()}]
    for bp, sp in GRID:
        cfg = dataclasses.replace(base, block_p=bp, splits=sp)
        r = {"block_p": bp, "splits": sp}
        try:
            out, d = time_fwd_dstate(c, spec, cfg, dout, bench, r)
            r["out_rel_vs_one_segment"] = rel(out, ref)
            r["dckpt_rel_vs_one_segment"] = rel(d, dref)
            del out, d
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(r)
        print(f"  {s['name']} {r}", flush=True)
    return rows


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main(out_path, names=()):
    sweep_shapes(out_path, names, per_shape)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
