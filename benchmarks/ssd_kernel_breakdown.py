"""GPU: per-kernel CUDA time of one SSD forward+backward (torch.profiler), mamba-ssm's Triton SSD
next to ssmgen's Triton SSD, on the suite's ssd shapes. Answers: where does each implementation
spend its backward, kernel by kernel.

Usage: python benchmarks/ssd_kernel_breakdown.py OUT.json [shape names...]
"""
import json
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import ssmgen
from ssmgen.bench import peer_import
from ssmgen.suite import load

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ssd_bench import make_inputs  # noqa: E402


def breakdown(fn, x, dout, reps=5):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}

    def fb():
        torch.autograd.grad(fn(**leaves), list(leaves.values()), dout)

    for _ in range(3):
        fb()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fb()
        torch.cuda.synchronize()
    per = defaultdict(float)
    cnt = defaultdict(int)
    for e in prof.events():
        if e.device_type.name == "CUDA":
            per[e.name] += e.device_time / 1e3 / reps
            cnt[e.name] += 1
    rows = sorted(per.items(), key=lambda kv: -kv[1])
    return [{"kernel": k, "ms": round(v, 4), "calls": cnt[k] // reps} for k, v in rows], \
        round(sum(per.values()), 4)


def main():
    out_path = sys.argv[1]
    names = sys.argv[2:] or [s["name"] for s in load()["ssd"]]
    peer = peer_import("mamba_ssm.ops.triton.ssd_combined")
    res = {}
    for s in load()["ssd"]:
        if s["name"] not in names:
            continue
        x = make_inputs(s)
        dout = torch.randn_like(x["x"])
        impl = {"ssmgen_triton": lambda **a: ssmgen.mamba_chunk_scan_combined(
            chunk_size=s["chunk"], dt_softplus=True, backend="triton", **a)}
        if peer is not None:
            impl["mamba_ssm"] = lambda **a: peer.mamba_chunk_scan_combined(
                chunk_size=s["chunk"], dt_softplus=True, **a)
        for name, fn in impl.items():
            rows, total = breakdown(fn, x, dout)
            res[f"{s['name']}/{name}"] = {"total_ms": total, "kernels": rows}
            print(f"== {s['name']} {name}: {total:.3f} ms of kernels per fwd+bwd")
            for r in rows:
                print(f"  {r['ms']:8.4f} ms  x{r['calls']:<3d} {r['kernel'][:110]}")
    json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
