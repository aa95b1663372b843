"""GPU: sweep the Triton SSD kernels' configs on the suite's `ssd` shapes, check them against
mamba-ssm's Triton SSD (and ssmgen's fp32 torch path), and time them side by side.

Per shape: the peer's forward and forward+backward; per config: ssmgen's forward kernel, its
backward (both passes and the partial sums), forward+backward through the public call, peak
memory, and the relative difference of out and every gradient to the peer's and to the fp32
chunked torch path. Medians of triton.testing.do_bench.

Usage: python benchmarks/ssd_sweep.py OUT.json [shape names...] [--kernels]
(--kernels: each kernel alone over its config grid, no peer)
"""
import json
import sys
import time

import torch
from triton.testing import do_bench

import ssmgen
from ssmgen.backends import triton_ssd as ts
from ssmgen.bench import peak_mb, peer_import
from ssmgen.ssd import normalize_ssd
from ssmgen.ssd_kernels import spec_of
from ssmgen.suite import load

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ssd_bench import make_inputs, time_fwd_dstate  # noqa: E402

CONFIGS = [
    dict(),  # the default
    dict(block_q=64, block_p=32, fwd_warps=8, bwd_block_p=64, heads_per_program=1, bwd_warps=8),
    dict(block_q=64, block_p=32, fwd_warps=8, bwd_block_p=64, heads_per_program=4, bwd_warps=8),
    dict(block_q=64, block_p=64, fwd_warps=8, bwd_block_p=32, heads_per_program=2, bwd_warps=4),
    dict(block_q=64, block_p=16, fwd_warps=4, bwd_block_p=64, heads_per_program=8, bwd_warps=8),
    dict(block_q=32, block_p=32, fwd_warps=4, bwd_block_p=32, heads_per_program=1, bwd_warps=4),
    dict(block_q=32, block_p=64, fwd_warps=4, bwd_block_p=64, heads_per_program=4, bwd_warps=4),
    dict(block_q=128, block_p=32, fwd_warps=8, bwd_block_p=32, heads_per_program=1, bwd_warps=8),
    dict(block_q=128, block_p=16, fwd_warps=8, bwd_block_p=64, heads_per_program=2, bwd_warps=8),
    dict(block_q=64, block_p=32, fwd_warps=4, fwd_stages=4, bwd_block_p=64, heads_per_program=2,
         bwd_warps=8, bwd_stages=2),
]


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def grads(fn, x, dout):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    out = fn(**leaves)
    g = torch.autograd.grad(out, list(leaves.values()), dout)
    return out.detach(), dict(zip(leaves, g))


def run_shape(s, peer, configs, bench):
    x = make_inputs(s)
    dout = torch.randn_like(x["x"])
    row = {"name": s["name"], "configs": []}
    ref_fn = (lambda **a: peer.mamba_chunk_scan_combined(chunk_size=s["chunk"], dt_softplus=True,
                                                          **a)) if peer else None
    if peer:
        ref_out, ref_g = grads(ref_fn, x, dout)
        with torch.no_grad():
            row["peer_fwd_ms"] = bench(lambda: ref_fn(**x))
        row["peer_fwdbwd_ms"] = bench(lambda: grads(ref_fn, x, dout))
        row["peer_peak_mb"] = peak_mb(lambda: grads(ref_fn, x, dout))
        print(f"{s['name']} peer fwd {row['peer_fwd_ms']:.3f} f+b {row['peer_fwdbwd_ms']:.3f} "
              f"peak {row['peer_peak_mb']:.0f} MB", flush=True)
    c = normalize_ssd(chunk_size=s["chunk"], dt_softplus=True, **x)
    spec = spec_of(c)
    for cd in configs:
        cfg = ts.SSDConfig(**cd) if cd else ts.walk_config(spec, c.batch, c.heads)
        r = {"config": cfg.to_dict()}
        try:
            t0 = time.time()
            fn = lambda **a: ssmgen.mamba_chunk_scan_combined(  # noqa: E731
                chunk_size=s["chunk"], dt_softplus=True, backend="triton", config=cfg, **a)
            out, g = grads(fn, x, dout)
            torch.cuda.synchronize()
            r["first_call_s"] = time.time() - t0
            if peer:
                r["rel_vs_peer"] = {"out": rel(out, ref_out),
                                    **{k: rel(g[k], ref_g[k]) for k in g}}
            _, _, ckpt, yi = ts.forward(c, spec, cfg, for_backward=True)
            r["fwd_kernel_ms"] = bench(lambda: ts.forward(c, spec, cfg))
            r["bwd_ms"] = bench(lambda: ts.backward(c, spec, cfg, ckpt, dout, yi=yi))
            with torch.no_grad():
                r["fwd_ms"] = bench(lambda: fn(**x))
            r["fwdbwd_ms"] = bench(lambda: grads(fn, x, dout))
            r["peak_mb"] = peak_mb(lambda: grads(fn, x, dout))
            del ckpt
        except Exception as e:  # recorded; the other configs still run
            r["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        torch.cuda.empty_cache()
        row["configs"].append(r)
        print(f"  {cfg.tag('fwd')} / {cfg.tag('bwd')}: " + ", ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
            if k != "config"), flush=True)
    return row


FWD_GRID = [(q, p, w, st) for q in (16, 32, 64) for p in (16, 32, 64) for w in (4, 8)
            for st in (1, 2) if (w == 4 or p >= 32) and not (q == 64 and p == 64 and w == 4)]
BWD_GRID = [(q, p, hb, w) for q in (16, 32, 64) for p in (32, 64) for hb in (1, 2, 4)
            for w in (4, 8) if not (q == 64 and w == 4 and p == 64)]


def _show(s, tag, r):
    print(f"  {s['name']} {tag}: " + ", ".join(
        f"{k}={v:.3f}" for k, v in r.items() if isinstance(v, float)), r.get("error", ""),
        flush=True)


def kernel_sweep(s, bench):
    """Each kernel alone over its own grid: fwd and dstate per (block_q, block_p, warps,
    stages); bwd per (block_q, bwd_block_p, heads_per_program, warps)."""
    x = make_inputs(s)
    dout = torch.randn_like(x["x"])
    c = normalize_ssd(chunk_size=s["chunk"], dt_softplus=True, **x)
    spec = spec_of(c)
    rows = []
    for q, p, w, st in FWD_GRID:
        cfg = ts.SSDConfig(block_q=q, block_p=p, fwd_warps=w, fwd_stages=st)
        r = {"kind": "fwd+dstate", "config": cfg.to_dict()}
        try:
            time_fwd_dstate(c, spec, cfg, dout, bench, r)
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(r)
        _show(s, cfg.tag("fwd"), r)
    for q, p, hb, w in BWD_GRID:
        cfg = ts.SSDConfig(block_q=q, block_p=32, fwd_warps=4, bwd_block_p=p,
                           heads_per_program=hb, bwd_warps=w)
        r = {"kind": "bwd", "config": cfg.to_dict()}
        try:
            _, _, ckpt, yi = ts.forward(c, spec, cfg, for_backward=True)
            dckpt, _, sig = ts.backward_states(c, spec, cfg, ckpt.shape[2], dout, ckpt=ckpt)
            r["bwd_ms"] = bench(lambda: ts.backward_grads(c, spec, cfg, ckpt, dckpt, dout, yi, sig))
            del ckpt, dckpt
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(r)
        _show(s, cfg.tag("bwd"), r)
        torch.cuda.empty_cache()
    return rows


def main(out_path, names=()):
    shapes = [s for s in load()["ssd"] if not names or s["name"] in names]
    peer = None if "--kernels" in names else peer_import("mamba_ssm.ops.triton.ssd_combined")
    print(f"peer: {'found' if peer else 'not found'}", flush=True)
    bench = lambda f: do_bench(f, warmup=10, rep=60, return_mode="median")  # noqa: E731
    if "--kernels" in names:
        shapes = [s for s in load()["ssd"] if s["name"] in names] or load()["ssd"]
        rows = [{"name": s["name"], "kernels": kernel_sweep(s, bench)} for s in shapes]
    else:
        rows = [run_shape(s, peer, CONFIGS, bench) for s in shapes]
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "peer": peer is not None}
    with open(out_path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
