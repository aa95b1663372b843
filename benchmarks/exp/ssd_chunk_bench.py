"""GPU: the chunk-form SSD experiment (exp/ssd_chunk.py) against the shipped default and
mamba-ssm, in one process.

1. Numerics: bf16 against the float64 reference on a mid shape, the chunk form's largest
   relative error over out and every gradient next to the shipped default's.
2. Per suite shape, per candidate (tile count NT, warps, stages, channel blocks of the walks):
   every chunk kernel of one forward+backward timed alone (median of do_bench); the best
   candidate per kernel summed; forward+backward of the best combination through Chunk;
   its outputs against the shipped default's.
3. The shipped default and mamba-ssm through the public call (ssd_sweep_common.compare).

Usage: python benchmarks/exp/ssd_chunk_bench.py OUT.json [shape names...]
"""
import json
import os
import sys

import torch
from triton.testing import do_bench

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from ssd_chunk import Chunk  # noqa: E402
from ssd_bench import make_inputs  # noqa: E402
from ssd_sweep_common import compare  # noqa: E402

import ssmgen  # noqa: E402
from ssmgen.bench import peer_import  # noqa: E402
from ssmgen.ssd import ssd_ref  # noqa: E402
from ssmgen.suite import load  # noqa: E402

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")


def chunk_fb(k, x, dout):
    out, final = k.forward(*(x[n] for n in NAMES))
    g = k.backward(dout)
    return out, g


def rel(a, r):
    a, r = a.double(), r.double()
    return ((a - r).norm() / r.norm().clamp_min(1e-30)).item()


def numerics(res):
    torch.manual_seed(1)
    s = dict(batch=1, seqlen=512, heads=8, headdim=64, d_state=128, groups=1, dtype="bfloat16")
    x = make_inputs(s, seed=3)
    dout = torch.randn_like(x["x"])
    leaves = {n: v.detach().clone().requires_grad_(True) for n, v in x.items()}
    out_r = ssd_ref(**leaves, dt_softplus=True)
    gr = torch.autograd.grad(out_r, list(leaves.values()), dout.double())
    ref = dict(out=out_r.detach(), **{"d" + n: g for n, g in zip(x, gr)})
    mine = {}
    for name, cfg in (("hs2", dict(BASE, dybuf=True, msum="dbc", cdbc_hs=2)),
                      ("hs2_cb_split4", dict(BASE, dybuf=True, msum="dbc", cdbc_hs=2, splits=4,
                                             cbbuf=True))):
        out, g = chunk_fb(Chunk(cfg), x, dout)
        mine[name] = dict(out=out, **{"d" + n: g[n] for n in x})
    leaves = {n: v.detach().clone().requires_grad_(True) for n, v in x.items()}
    o2 = ssmgen.mamba_chunk_scan_combined(chunk_size=256, dt_softplus=True, backend="triton",
                                          **leaves)
    g2 = torch.autograd.grad(o2, list(leaves.values()), dout)
    ship = dict(out=o2.detach(), **{"d" + n: gg for n, gg in zip(x, g2)})
    res["numerics"] = {n: {"shipped": rel(ship[n], ref[n]),
                           **{c: rel(m[n], ref[n]) for c, m in mine.items()},
                           "chunk_nan": any(bool(torch.isnan(m[n]).any()) for m in mine.values())}
                       for n in ref}
    for n, v in res["numerics"].items():
        print(f"  {n:9s} " + " ".join(f"{c} {e:.2e}" for c, e in v.items() if c != "chunk_nan")
              + f" nan {v['chunk_nan']}", flush=True)


BASE = dict(T=64, NT=2, cst_warps=8, cst_stages=1, cout_warps=4, cout_stages=1, cdst_warps=4,
            cdst_stages=3, cdx_warps=4, cdx_stages=1, cdbc_warps=8, cdbc_stages=2)


def candidates(s):
    """(name, config): run 1's best per kernel at 128-step chunks, then the run-2 changes."""
    m = dict(BASE, dybuf=True, msum="dbc")
    cb = dict(m, cbbuf=True, cdbc_hs=2)
    out = [("run1_best", BASE), ("hs2", dict(m, cdbc_hs=2)), ("hs2_cb", cb)]
    if s["batch"] * s["heads"] >= 264:
        out += [("dybuf", dict(BASE, dybuf=True)), ("dybuf_msum", m),
                ("hs4", dict(m, cdbc_hs=4)), ("hs4_cb", dict(cb, cdbc_hs=4)),
                ("hs2_cb_cdx_w4s2", dict(cb, cdx_stages=2)),
                ("hs2_cb_cout_w4s2", dict(cb, cout_stages=2)),
                ("hs2_cb_nt4", dict(cb, NT=4)), ("hs2_cb_split2", dict(cb, splits=2))]
    else:  # few walks: sequence splits
        for sp in (4, 8, 16):
            for bp in (64, 32):
                out.append((f"hs2_cb_split{sp}_bp{bp}", dict(cb, splits=sp, cst_bp=bp,
                                                             cdst_bp=bp)))
    return out


def time_kernels(cfg, x, dout):
    k = Chunk(cfg)
    chunk_fb(k, x, dout)  # compile
    k.record = []
    chunk_fb(k, x, dout)
    t = {}
    for name, fn in k.record:
        t[name] = do_bench(fn, warmup=5, rep=40, return_mode="median")
    return t


def main():
    out_path = sys.argv[1]
    names = sys.argv[2:] or [s["name"] for s in load()["ssd"]]
    res = {"gpu": torch.cuda.get_device_name()}
    numerics(res)
    json.dump(res, open(out_path, "w"), indent=1)
    peer = peer_import("mamba_ssm.ops.triton.ssd_combined") if os.environ.get("PEER") == "1" \
        else None
    for s in load()["ssd"]:
        if s["name"] not in names:
            continue
        print(f"=== {s['name']}", flush=True)
        torch.manual_seed(0)
        x = make_inputs(s)
        dout = torch.randn_like(x["x"])
        rows = []
        for name, cfg in candidates(s):
            try:
                t = time_kernels(cfg, x, dout)
                k = Chunk(cfg)
                fb = lambda: chunk_fb(k, x, dout)  # noqa: E731
                ms = do_bench(fb, warmup=10, rep=60, return_mode="median")
            except Exception as e:  # a config that does not compile: recorded, not fatal
                print(f"  {name} failed: {str(e)[:200]}", flush=True)
                continue
            rows.append({"name": name, "cfg": cfg, "ms": t, "kernel_sum": sum(t.values()),
                         "fb_ms_median": ms})
            print(f"  {name:18s} f+b {ms:.3f} kernels {sum(t.values()):.3f}: "
                  + " ".join(f"{n} {v:.3f}" for n, v in t.items()), flush=True)
        best = min(rows, key=lambda r: r["fb_ms_median"])
        k = Chunk(best["cfg"])
        fwd = do_bench(lambda: k.forward(*(x[n] for n in NAMES)), warmup=10, rep=100,
                       return_mode="median")
        summary = {"best": best["name"], "fwd_ms_median": fwd}
        print(f"  best {best['name']}: f+b {best['fb_ms_median']:.3f}, fwd {fwd:.3f}", flush=True)
        # outputs against the shipped default's
        out, g = chunk_fb(Chunk(best["cfg"]), x, dout)
        leaves = {n: v.detach().clone().requires_grad_(True) for n, v in x.items()}
        o2 = ssmgen.mamba_chunk_scan_combined(chunk_size=s["chunk"], dt_softplus=True,
                                              backend="triton", **leaves)
        g2 = torch.autograd.grad(o2, list(leaves.values()), dout)
        diff = {"out": rel(out, o2), **{"d" + n: rel(g[n], gg) for n, gg in zip(x, g2)}}
        print("  vs shipped: " + " ".join(f"{n} {v:.1e}" for n, v in diff.items()), flush=True)
        from ssmgen.backends.triton_ssd_chunk import SSDChunkConfig

        impl = {"shipped": None, "chunk_pkg": SSDChunkConfig()}
        if s["batch"] * s["heads"] < 264:
            impl.update(chunk_pkg_split8_p32=SSDChunkConfig(splits=8, walk_block_p=32),
                        chunk_pkg_split16_p32=SSDChunkConfig(splits=16, walk_block_p=32))
        cmp = compare(s, x, dout, impl, peer)
        res[s["name"]] = {"rows": rows, "best": summary, "vs_shipped": diff, "compare": cmp}
        json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
