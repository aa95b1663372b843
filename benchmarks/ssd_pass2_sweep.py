"""GPU: the SSD backward's pass 2 as one kernel (bwd) or two (bwdx + dbc, config.bwd_kernels=2),
each kernel timed alone on the suite's ssd shapes, and the split form's gradients against the
one kernel's. Then forward+backward through the public call with the best split config, the
default config and mamba-ssm's Triton SSD, in one process (median of do_bench, and the summed
kernel times of a torch.profiler run).

Usage: python benchmarks/ssd_pass2_sweep.py OUT.json [shape names...]
"""
import dataclasses
import itertools
import json
import os
import sys

import torch
from triton.testing import do_bench

from ssmgen.backends import triton_ssd as ts
from ssmgen.bench import peer_import
from ssmgen.ssd import _normalize
from ssmgen.ssd_kernels import spec_of
from ssmgen.suite import load

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ssd_bench import make_inputs  # noqa: E402
from ssd_sweep_common import compare  # noqa: E402

# the grids of the first run (ssd_pass2/); SWEEP_BWDX / SWEEP_DBC (JSON lists of dicts) replace them
BWDX = json.loads(os.environ["SWEEP_BWDX"]) if "SWEEP_BWDX" in os.environ else [
    dict(bwd_block_p=p, heads_per_program=h, bwd_warps=w)
    for p, h, w in itertools.product((32, 64), (1, 2, 4), (4, 8))]
DBC = json.loads(os.environ["SWEEP_DBC"]) if "SWEEP_DBC" in os.environ else [
    dict(dbc_block_p=p, dbc_warps=w, dbc_stages=s)
    for p, w, s in itertools.product((32, 64), (4, 8), (1, 2))]


def bench(f):
    return do_bench(f, warmup=5, rep=40, return_mode="median")


def record(fn, mod=ts):
    """(kind, config, args, grid) of each SSD kernel fn() launches through mod's _launch (the
    walk's, or the chunk form's module), and fn()'s result."""
    seen, real = [], mod._launch

    def rec(spec_, cfg_, kind, a, grid):
        seen.append((kind, cfg_, dict(a), grid))
        return real(spec_, cfg_, kind, a, grid)

    mod._launch = rec
    try:
        return seen, fn()
    finally:
        mod._launch = real


def launches(c, spec, cfg, ckpt, dckpt, dout, yi, sig):
    """(kind, args, grid) of each kernel backward_grads launches, and its gradients."""
    return record(lambda: ts.backward_grads(c, spec, cfg, ckpt, dckpt, dout, yi, sig))


def time_kernels(c, spec, cfg, ckpt, dckpt, dout, yi, sig):
    seen, g = launches(c, spec, cfg, ckpt, dckpt, dout, yi, sig)
    ms = {kind: bench(lambda: ts._launch(spec, cfg_, kind, a, grid))
          for kind, cfg_, a, grid in seen}
    ms["backward_grads"] = bench(
        lambda: ts.backward_grads(c, spec, cfg, ckpt, dckpt, dout, yi, sig))
    return ms, g


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def main():
    out_path = sys.argv[1]
    names = sys.argv[2:] or [s["name"] for s in load()["ssd"]]
    peer = peer_import("mamba_ssm.ops.triton.ssd_combined")
    res = {"device": torch.cuda.get_device_name(), "shapes": {}}
    for s in load()["ssd"]:
        if s["name"] not in names:
            continue
        x = make_inputs(s)
        dout = torch.randn_like(x["x"])
        c = _normalize(**x, chunk_size=s["chunk"], dt_softplus=True, check_values=False)
        spec = spec_of(c)
        base = ts.walk_config(spec, c.batch, c.heads)
        _, _, ckpt, yi = ts.forward(c, spec, base, for_backward=True)
        dckpt, _, sig = ts.backward_states(c, spec, base, ckpt.shape[2], dout.contiguous(),
                                           ckpt=ckpt)
        row = {"default": dataclasses.asdict(base)}
        one = dataclasses.replace(base, bwd_kernels=1, bwd_block_p=32)  # the earlier default
        ms, g1 = time_kernels(c, spec, one, ckpt, dckpt, dout, yi, sig)
        row["one_kernel_ms"] = ms
        print(f"== {s['name']} one kernel {one.tag('bwd')}: {ms}", flush=True)
        row["bwdx"], row["dbc"] = [], []
        fixed_dbc = {k: getattr(base, k) for k in DBC[0]}
        for k in BWDX:
            cfg = dataclasses.replace(base, bwd_kernels=2, **{**fixed_dbc, **k})
            try:
                ms, g2 = time_kernels(c, spec, cfg, ckpt, dckpt, dout, yi, sig)
            except Exception as e:  # a config that does not compile: recorded, sweep goes on
                row["bwdx"].append({**k, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
            err = {n: rel(g2[n], g1[n]) for n in g1 if g1[n] is not None}
            row["bwdx"].append({**k, "ms": ms["bwdx"], "err_vs_one_kernel": err})
            print(f"  bwdx {k}: {ms['bwdx']:.3f} ms; max rel diff {max(err.values()):.2e}",
                  flush=True)
        best_x = min((r for r in row["bwdx"] if "ms" in r), key=lambda r: r["ms"])
        best_x = {k: best_x[k] for k in BWDX[0] if k in best_x}
        for k in DBC:
            cfg = dataclasses.replace(base, bwd_kernels=2, **best_x, **k)
            try:
                ms, g2 = time_kernels(c, spec, cfg, ckpt, dckpt, dout, yi, sig)
            except Exception as e:
                row["dbc"].append({**k, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
            err = {n: rel(g2[n], g1[n]) for n in ("B", "C")}
            row["dbc"].append({**k, "ms": ms["dbc"], "pass2_ms": ms["backward_grads"],
                               "err_vs_one_kernel": err})
            print(f"  dbc {k}: {ms['dbc']:.3f} ms, pass 2 {ms['backward_grads']:.3f}; "
                  f"dB/dC rel diff {err['B']:.2e} / {err['C']:.2e}", flush=True)
        best_d = min((r for r in row["dbc"] if "ms" in r), key=lambda r: r["ms"])
        best = dataclasses.replace(base, bwd_kernels=2, **best_x,
                                   **{k: best_d[k] for k in DBC[0]})
        row["best_split"] = dataclasses.asdict(best)
        # forward+backward through the public call, side by side with the peer
        impl = {"ssmgen_one_kernel": one, "ssmgen_default": base, "ssmgen_split_best": best}
        row["fb"] = compare(s, x, dout, impl, peer)
        res["shapes"][s["name"]] = row
        json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
