"""GPU: (1) the deterministic backward's cost: forward+backward time of the suite's m1 shapes,
default (atomics) vs SSMGEN_DETERMINISTIC=1, both backends; (2) what one GPU does for the
context-parallel scan's scaling: forward+backward of one long sequence (L = 2**20) whole, and of
half of it from an initial state (the work of each of 2 ranks: pass 2 only, see
ssmgen/distributed.py), with peak memory. Medians of CUDA-event timings, random inputs.
Usage: python benchmarks/det_and_long.py OUT.json"""
import json
import os
import sys

import torch
from triton.testing import do_bench

import ssmgen
from ssmgen import suite
from ssmgen.bench import peak_mb


def fwdbwd(x, **kw):
    leaves = [t.detach().requires_grad_(t.is_floating_point() or t.is_complex()) for t in x]
    dout = torch.randn_like(x[0])

    def run():
        out = ssmgen.selective_scan(*leaves[:5], D=leaves[5], z=leaves[6], delta_bias=leaves[7],
                                    delta_softplus=True, **kw)
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(out, leaves, dout)
    run()
    return do_bench(run, warmup=5, rep=50, return_mode="median"), run


def main(out_path):
    res = {"device": torch.cuda.get_device_name(), "det": [], "long": []}
    for s in suite.scan_shapes():
        if not s["name"].startswith("m1_") or s.get("A", "real") == "complex":
            continue
        x = suite.make_inputs(s)
        for be in ("cuda", "triton"):
            row = {"shape": s["name"], "backend": be}
            for det in ("0", "1"):
                os.environ["SSMGEN_DETERMINISTIC"] = det
                row["det_ms" if det == "1" else "default_ms"] = fwdbwd(x, backend=be)[0]
            os.environ["SSMGEN_DETERMINISTIC"] = "0"
            row["ratio"] = row["det_ms"] / row["default_ms"]
            print(row, flush=True)
            res["det"].append(row)
    L, d, N = 2**20, 256, 16
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *sh: torch.randn(*sh, device="cuda", generator=g)  # noqa: E731
    x = [r(1, d, L).bfloat16(), (0.1 * torch.rand(1, d, L, device="cuda", generator=g)).bfloat16(),
         -torch.rand(d, N, device="cuda", generator=g), r(1, 1, N, L).bfloat16(),
         r(1, 1, N, L).bfloat16(), r(d), r(1, d, L).bfloat16(), 0.1 * r(d).abs()]
    half = [t[..., : L // 2] if t.dim() >= 3 else t for t in x]
    h0 = r(1, d, N)
    for be in ("cuda", "triton"):
        row = {"backend": be, "L": L, "dim": d, "d_state": N, "dtype": "bfloat16"}
        row["whole_ms"], run = fwdbwd(x, backend=be)
        row["whole_peak_mb"] = peak_mb(run)
        row["half_from_state_ms"] = fwdbwd(half, backend=be, initial_state=h0)[0]
        row["ideal_2gpu_speedup"] = row["whole_ms"] / row["half_from_state_ms"]
        print(row, flush=True)
        res["long"].append(row)
    json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
