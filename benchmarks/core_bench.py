"""Suite shapes on a GPU: ssmgen's Triton backend side by side with mamba-ssm's CUDA kernel (when
its extension `selective_scan_cuda` is importable) and the PyTorch reference, in one process.

Usage: python benchmarks/core_bench.py [--suite FILE] [--out DIR]
Times are medians of triton.testing.do_bench (CUDA events) on random inputs drawn as the suite
file says, all options on. Writes results.json and results.md to --out and prints the table.
"""
import argparse
import json
import os
import platform
import time

import torch
import triton
from triton.testing import do_bench

import ssmgen

from ssmgen.suite import make_inputs, scan_shapes


def peer_module():
    try:
        import selective_scan_cuda  # noqa: F401
        return selective_scan_cuda
    except ImportError:
        return None


def bench(fn, warmup=25, rep=200):
    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def run_shape(s, peer):
    x = make_inputs(s)
    u = x[0]
    dout = torch.randn_like(u)
    row = {"name": s["name"]}
    # ssmgen forward (inference: no checkpoints) and forward+backward
    with torch.no_grad():
        out = ssmgen.selective_scan(*x, delta_softplus=True, backend="triton")
        row["ssmgen_fwd_ms"] = bench(lambda: ssmgen.selective_scan(*x, delta_softplus=True,
                                                                     backend="triton"))
    leaves = [t.detach().requires_grad_(True) for t in x]

    def fb():
        o = ssmgen.selective_scan(*leaves, delta_softplus=True, backend="triton")
        torch.autograd.backward(o, dout)

    fb()
    row["ssmgen_fwdbwd_ms"] = bench(fb)
    if peer is not None:
        def pf():
            return peer.fwd(*x, True)

        res = pf()
        pout = res[2] if len(res) > 2 else res[0]
        row["out_rel_diff_vs_peer"] = ((out.float() - pout.float()).norm()
                                       / pout.float().norm()).item()
        row["peer_fwd_ms"] = bench(pf)

        def pfb():
            o, xs, oz = peer.fwd(*x, True)
            peer.bwd(*x, dout, xs, o, None, True, False)

        row["peer_fwdbwd_ms"] = bench(pfb)
        row["speedup_fwd"] = row["peer_fwd_ms"] / row["ssmgen_fwd_ms"]
        row["speedup_fwdbwd"] = row["peer_fwdbwd_ms"] / row["ssmgen_fwdbwd_ms"]
    return row


def reference_time(s):
    """The float64 PyTorch reference (a loop over L), one forward, for scale."""
    x = make_inputs(s)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    ssmgen.selective_scan(*x, delta_softplus=True, backend="reference")
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default=None, help="suite file (default: the one ssmgen ships)")
    p.add_argument("--out", default=".")
    p.add_argument("--only", default=None, help="comma-separated shape names")
    a = p.parse_args()
    suite = scan_shapes(a.suite)
    if a.only:
        suite = [s for s in suite if s["name"] in a.only.split(",")]
    peer = peer_module()
    rows = []
    for s in suite:
        rows.append(run_shape(s, peer))
        print(json.dumps(rows[-1]), flush=True)
    ref_ms = reference_time(suite[0])
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "ssmgen": ssmgen.__version__,
            "peer": "mamba-ssm 2.3.2.post1 selective_scan_cuda" if peer else None,
            "reference_fwd_ms": {suite[0]["name"]: ref_ms}, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}
    os.makedirs(a.out, exist_ok=True)
    json.dump({"meta": meta, "rows": rows}, open(os.path.join(a.out, "results.json"), "w"),
              indent=1)
    cols = ["ssmgen_fwd_ms", "peer_fwd_ms", "speedup_fwd", "ssmgen_fwdbwd_ms", "peer_fwdbwd_ms",
            "speedup_fwdbwd", "out_rel_diff_vs_peer"]
    lines = [f"# {meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}, {meta['date']}",
             "", "| shape | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(
            f"{r[c]:.4g}" if c in r else "-" for c in cols) + " |")
    lines.append("")
    lines.append(f"PyTorch float64 reference, forward, {suite[0]['name']}: {ref_ms:.1f} ms")
    text = "\n".join(lines)
    open(os.path.join(a.out, "results.md"), "w").write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
