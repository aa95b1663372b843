"""Shared by the SSD sweep scripts: the call of a suite shape, one forward+backward of the
kernels under a config, compiling configs ahead in a process pool, and the side-by-side
forward+backward through the public call (ssmgen configs and mamba-ssm's Triton SSD)."""
import multiprocessing as mp
import os
import sys
import time

import torch
from triton.testing import do_bench

import ssmgen
from ssmgen.backends import triton_ssd as ts
from ssmgen.bench import peak_mb
from ssmgen.ssd import _normalize
from ssmgen.ssd_kernels import _impl, decode_config, spec_of
from ssmgen.suite import load

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssd_bench import make_inputs  # noqa: E402
from ssd_kernel_breakdown import breakdown  # noqa: E402


def call_of(x):
    return _normalize(**x, chunk_size=256, dt_softplus=True, check_values=False)


def shape_inputs(s):
    """(inputs, dout, call, spec) of a suite ssd shape: fresh random inputs (seed 0)."""
    torch.manual_seed(0)
    x = make_inputs(s)
    dout = torch.randn_like(x["x"])
    c = call_of(x)
    return x, dout, c, spec_of(c)


def forward_only(s, x, impl, peer):
    """do_bench medians of the inference forward (no grad) through the public call, per
    ssmgen config of impl ({name: config or None}) and mamba-ssm's (peer: its module or None)."""
    fns = {n: (lambda cfg: lambda: ssmgen.mamba_chunk_scan_combined(
        chunk_size=s["chunk"], dt_softplus=True, backend="triton", config=cfg, **x))(cfg)
        for n, cfg in impl.items()}
    if peer is not None:
        fns["mamba_ssm"] = lambda: peer.mamba_chunk_scan_combined(
            chunk_size=s["chunk"], dt_softplus=True, **x)
    out = {}
    with torch.no_grad():
        for n, fn in fns.items():
            fn()
            out[n] = do_bench(fn, warmup=10, rep=100, return_mode="median")
            print(f"  fwd (no grad) {n}: {out[n]:.3f} ms", flush=True)
    return out


def pipeline(c, spec, cfg, dout):
    """out and every gradient of one forward+backward of the kernels under cfg (either
    Triton form: the walk's SSDConfig or the chunk form's SSDChunkConfig)."""
    mod = _impl(cfg)
    out, _, ckpt, saved = mod.forward(c, spec, cfg, for_backward=True)
    g = mod.backward(c, spec, cfg, ckpt, dout, saved=saved)
    return out, g


def empty_call(s):
    """The call of a suite ssd shape on uninitialized tensors (sizes, strides, dtypes only)."""
    return call_of({k: torch.empty_like(v) for k, v in make_inputs(s).items()})


def shipped_config(s):
    """The default config of a suite ssd shape's call."""
    c = empty_call(s)
    return ts.walk_config(spec_of(c), c.batch, c.heads)


def _warm_job(job):
    """In a worker process: compile (not run) every kernel of one config's forward+backward on
    uninitialized inputs of the shape's sizes: the same specializations as the real call."""
    name, cfg = job  # name: a suite ssd shape's, or the shape itself (a dict)
    s = name if isinstance(name, dict) else next(s for s in load()["ssd"] if s["name"] == name)
    c = empty_call(s)
    spec = spec_of(c)
    # cfg: the walk's fields (a dict), or any Triton config's encode() text
    cfg = decode_config(cfg) if isinstance(cfg, str) else ts.SSDConfig(**cfg)
    mod = _impl(cfg)

    def warm(spec_, cfg_, kind, a, grid):
        names = [n for n, _ in mod.kernel_params(spec_, kind)]
        mod.kernel(spec_, cfg_, kind).warmup(*[a[n] for n in names], grid=grid,
                                             **mod.launch_config(cfg_, kind))

    mod._launch = warm
    t0 = time.time()
    try:
        pipeline(c, spec, cfg, torch.empty_like(c.x))
        return None, time.time() - t0
    except Exception as e:  # recorded; the timing step meets it again and skips it
        return f"{type(e).__name__}: {str(e)[:300]}", time.time() - t0


def compile_ahead(jobs, procs=None):
    """Compiles the (shape, config) jobs in procs processes (default SWEEP_JOBS, else all CPUs
    but two)."""
    procs = procs or int(os.environ.get("SWEEP_JOBS", str(max(1, (os.cpu_count() or 2) - 2))))
    t0 = time.time()
    with mp.get_context("spawn").Pool(procs) as pool:
        res = pool.map(_warm_job, jobs, chunksize=1)
    errs = [(j, e) for j, (e, _) in zip(jobs, res) if e]
    print(f"compiled {len(jobs)} configs in {time.time() - t0:.0f} s with {procs} processes; "
          f"{len(errs)} failed", flush=True)
    for j, e in errs[:10]:
        print(f"  failed {j[0]} {j[1]}: {e[:200]}", flush=True)


def compare(s, x, dout, impl, peer):
    """Forward+backward through the public call, side by side: do_bench medians, profiled
    kernel sums, peak memory. impl: {name: ssmgen config}; peer: mamba-ssm's module or None."""
    fns = {n: (lambda cfg: lambda **a: ssmgen.mamba_chunk_scan_combined(
        chunk_size=s["chunk"], dt_softplus=True, backend="triton", config=cfg, **a))(cfg)
        for n, cfg in impl.items()}
    if peer is not None:
        fns["mamba_ssm"] = lambda **a: peer.mamba_chunk_scan_combined(
            chunk_size=s["chunk"], dt_softplus=True, **a)
    rows = {}
    for n, fn in fns.items():
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}

        def fb():
            torch.autograd.grad(fn(**leaves), list(leaves.values()), dout)

        fb()
        t = do_bench(fb, warmup=10, rep=100, return_mode="median")
        kernels, kern = breakdown(fn, x, dout)
        mb = peak_mb(fb)
        rows[n] = {"fb_ms_median": t, "kernel_ms": kern, "peak_mb": mb, "kernels": kernels[:12]}
        print(f"  f+b {n}: {t:.3f} ms median, {kern:.3f} ms of kernels, peak {mb:.0f} MB",
              flush=True)
        for r in kernels[:8]:
            print(f"      {r['ms']:8.4f} ms x{r['calls']} {r['kernel'][:100]}", flush=True)
    return rows
