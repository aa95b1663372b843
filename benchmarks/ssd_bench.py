"""GPU: Mamba-2 SSD on the suite's `ssd` shapes: ssmgen's Triton and CUDA kernels and its torch path
(ssmgen.ssd, chunked, fp32 matmuls) against mamba-ssm's fused Triton `mamba_chunk_scan_combined` where importable.

Per shape and implementation: median forward time (no grad), median forward+backward time
(triton.testing.do_bench, return_mode="median"), peak memory of forward+backward above what was
allocated before, and ssmgen's output against the peer's (relative norm of the difference). An
implementation that runs out of memory (or fails otherwise) is recorded in the row and the
script goes on.

Inputs as Mamba2 passes them: x, z, B, C, dt in the suite dtype (bf16); A = -exp(U(0,1)) fp32;
D ~ N(0,1) fp32 (heads,); dt_bias fp32 (heads,); dt_softplus=True.

Usage: python benchmarks/ssd_bench.py OUT.json [shape names...]
"""
import json
import os
import sys

import torch
from triton.testing import do_bench

import ssmgen
from ssmgen.bench import peak_mb, peer_import
from ssmgen.suite import load


def make_inputs(s, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt_ = getattr(torch, s["dtype"])
    b, L, H, P = s["batch"], s["seqlen"], s["heads"], s["headdim"]
    G, N = s["groups"], s["d_state"]

    def rn(*shape, dtype=dt_):
        return torch.randn(*shape, device="cuda", generator=g).to(dtype)

    def ru(*shape, dtype=dt_):
        return torch.rand(*shape, device="cuda", generator=g).to(dtype)

    return dict(x=rn(b, L, H, P), dt=(0.5 * rn(b, L, H, dtype=torch.float32) - 2.0).to(dt_),
                A=-torch.exp(ru(H, dtype=torch.float32)), B=rn(b, L, G, N), C=rn(b, L, G, N),
                D=rn(H, dtype=torch.float32), z=rn(b, L, H, P),
                dt_bias=0.5 * ru(H, dtype=torch.float32))


def impls(peer):
    out = {"ssmgen_triton": lambda chunk, **a: ssmgen.mamba_chunk_scan_combined(
        chunk_size=chunk, dt_softplus=True, backend="triton", **a),
           "ssmgen_cuda": lambda chunk, **a: ssmgen.mamba_chunk_scan_combined(
        chunk_size=chunk, dt_softplus=True, backend="cuda", **a),
           "ssmgen_torch": lambda chunk, **a: ssmgen.mamba_chunk_scan_combined(
        chunk_size=chunk, dt_softplus=True, backend="torch", **a)}
    if os.environ.get("SSD_TORCH", "1") == "0":  # the slow fp32 PyTorch path left out
        del out["ssmgen_torch"]
    if os.environ.get("SSD_CUDA", "1") == "0":  # the opt-in CUDA SSD backend left out
        del out["ssmgen_cuda"]
    if peer is not None:
        out["mamba_ssm"] = lambda chunk, **a: peer.mamba_chunk_scan_combined(
            chunk_size=chunk, dt_softplus=True, **a)
    return out


def run_shape(s, peer, warmup=10, rep=100):
    bench = lambda f: do_bench(f, warmup=warmup, rep=rep, return_mode="median")  # noqa: E731
    x = make_inputs(s)
    dout = torch.randn_like(x["x"])
    row = {k: s[k] for k in ("name", "batch", "seqlen", "heads", "headdim", "d_state", "groups",
                             "chunk", "dtype")}
    outs = {}
    for name, fn in impls(peer).items():
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}

        def fwd():
            return fn(s["chunk"], **x)

        def fb():
            torch.autograd.grad(fn(s["chunk"], **leaves), list(leaves.values()), dout)

        try:
            with torch.no_grad():
                outs[name] = fwd().float()
                row[f"{name}_fwd_ms"] = bench(fwd)
            fb()
            row[f"{name}_fwdbwd_ms"] = bench(fb)
            row[f"{name}_peak_mb"] = peak_mb(fb)
        except torch.cuda.OutOfMemoryError as e:
            row[f"{name}_error"] = f"OOM: {str(e).splitlines()[0][:200]}"
        except Exception as e:  # recorded; the other implementations still run
            row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            leaves = None
            torch.cuda.empty_cache()
        print(f"  {s['name']} {name}: " + ", ".join(
            f"{k[len(name) + 1:]}={v:.3f}" if isinstance(v, float) else f"{k[len(name) + 1:]}={v}"
            for k, v in row.items() if k.startswith(name + "_")), flush=True)
    for name in ("ssmgen_triton", "ssmgen_cuda", "ssmgen_torch"):
        if name in outs and "mamba_ssm" in outs:
            a, b = outs[name], outs["mamba_ssm"]
            row[f"{name}_out_rel_diff_vs_peer"] = ((a - b).norm() / b.norm()).item()
    return row


def sweep_shapes(out_path, names, per_shape, shapes=None):
    """The sweep scripts' loop: per_shape(shape, bench) -> rows for each suite `ssd` shape (all,
    or those named; or for the given shapes), written to out_path as JSON after every shape,
    with the GPU's memory cache emptied between shapes."""
    bench = lambda f: do_bench(f, warmup=5, rep=40, return_mode="median")  # noqa: E731
    res = {"device": torch.cuda.get_device_name(), "shapes": {}}
    for s in shapes or load()["ssd"]:
        if names and s["name"] not in names:
            continue
        res["shapes"][s["name"]] = per_shape(s, bench)
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)
        torch.cuda.empty_cache()


def time_fwd_dstate(c, spec, cfg, dout, bench, row):
    """The forward and backward pass 1 of one config (either SSD backend), each timed alone
    into row (fwd_ms, dstate_ms); returns their outputs (out, state gradients)."""
    from ssmgen.backends import triton_ssd as ts

    out, _, ckpt, _ = ts.forward(c, spec, cfg)
    dck, _, _ = ts.backward_states(c, spec, cfg, ckpt.shape[2], dout)
    row["fwd_ms"] = bench(lambda: ts.forward(c, spec, cfg))
    row["dstate_ms"] = bench(lambda: ts.backward_states(  # as the backward runs it
        c, spec, cfg, ckpt.shape[2], dout, ckpt=ckpt if ts.saves_yi(cfg) else None))
    return out, dck


def table(rows, names):
    cols = ["fwd_ms", "fwdbwd_ms", "peak_mb"]
    head = f"{'shape':<16}" + "".join(f"{n + ' ' + c:>28}" for n in names for c in cols)
    lines = [head + f"{'rel diff':>10}", "-" * (len(head) + 10)]
    for r in rows:
        cells = []
        for n in names:
            for c in cols:
                v = r.get(f"{n}_{c}")
                cells.append(f"{v:>28.3f}" if v is not None else
                             f"{('OOM' if 'OOM' in r.get(n + '_error', '') else 'error'):>28}")
        d = r.get("ssmgen_triton_out_rel_diff_vs_peer")
        lines.append(f"{r['name']:<16}" + "".join(cells) + (f"{d:>10.2e}" if d is not None
                                                            else f"{'-':>10}"))
    return "\n".join(lines)


def main(out_path, names=()):
    shapes = [s for s in load()["ssd"] if not names or s["name"] in names]
    mod = peer_import("mamba_ssm.ops.triton.ssd_combined")
    print(f"peer mamba_ssm.ops.triton.ssd_combined: {'found' if mod is not None else 'not found'}")
    rows = [run_shape(s, mod) for s in shapes]
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "peer": mod is not None,
            "peer_file": getattr(mod, "__file__", None)}
    with open(out_path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(table(rows, list(impls(mod))))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
