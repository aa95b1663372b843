"""GPU: the Triton SSD with sigma from dbc (config.bwd_kernels=3: pass 1 as dstate, pass 2 as
dbcs + bwdx) and the forward as one kernel (fwdy) or two (fwd_kernels=2: fstate + fouty), at
blocks of 32 to 128 steps, kernel by kernel on the suite's ssd shapes.

1. Every config of the grids below is compiled first in a pool of processes (they fill Triton's
   disk cache; the timing process then only loads the kernels).
2. Per kernel kind, each config is timed alone (median of do_bench), and the output and every
   gradient of its whole forward+backward are compared with the shipped default's (relative
   norm of the difference).
3. The fastest config per kind, put together, runs forward+backward through the public call
   next to the shipped default and mamba-ssm's Triton SSD, in one process: do_bench medians and
   the summed kernel times of a profiled run.

Usage: python benchmarks/ssd_chunk_sweep.py OUT.json [shape names...]
Environment: SWEEP_Q (block lengths, default "64,128"), SWEEP_JOBS (compile processes);
SWEEP_COMPARE (JSON {name: config fields over the shipped default}): skip 1-2, compare those.
"""
import dataclasses
import itertools
import json
import multiprocessing as mp
import os
import sys
import time

import torch
from triton.testing import do_bench

import ssmgen
from ssmgen.backends import triton_ssd as ts
from ssmgen.bench import peak_mb, peer_import
from ssmgen.ssd import _normalize
from ssmgen.ssd_kernels import spec_of
from ssmgen.suite import load

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssd_bench import make_inputs  # noqa: E402
from ssd_kernel_breakdown import breakdown  # noqa: E402
from ssd_pass2_sweep import record, rel  # noqa: E402


def grids():
    """kind timed -> config overrides; fstate and dstate share block_p and the fwd warps, so
    they are timed together (the 'walks' row)."""
    prod = lambda **kw: [dict(zip(kw, v)) for v in itertools.product(*kw.values())]  # noqa
    return {
        "walks": prod(block_p=(32, 64), fwd_warps=(4, 8)),
        "fouty": prod(fout_heads=(2, 4, 8), fout_warps=(4, 8), fout_stages=(1, 2)),
        "fwdy": [dict(o, fwd_kernels=1) for o in prod(block_p=(32, 64), fwd_warps=(4, 8))],
        "dbcs": prod(dbc_block_p=(32, 64), dbc_warps=(4, 8), dbc_stages=(1, 2),
                     dbc_block_n=(64, 128)),
        "bwdx": prod(heads_per_program=(2, 4, 8), bwd_warps=(4, 8), bwd_stages=(1, 2),
                     bwd_block_p=(32, 64)),
    }


TIMED = {"walks": ("fstate", "dstate"), "fouty": ("fouty",), "fwdy": ("fwdy",),
         "dbcs": ("dbcs",), "bwdx": ("bwdx",)}


def chunk_base(spec, batch, heads, q):
    """The chunk form's starting point at block length q: the shipped default's channel blocks
    and splits, every new kernel at a middling config."""
    d = ts.default_config(spec, batch, heads)
    return dataclasses.replace(d, block_q=q, bwd_kernels=3, fwd_kernels=2, fwd_stages=2,
                               heads_per_program=8, bwd_warps=4, bwd_stages=1,
                               bwd_block_p=min(64, d.bwd_block_p), dbc_warps=8, dbc_stages=2,
                               dbc_block_p=min(32, d.dbc_block_p), fout_heads=8, fout_warps=4,
                               fout_stages=1, fout_block_p=min(64, d.bwd_block_p))


def call_of(x):
    return _normalize(**x, chunk_size=256, dt_softplus=True, check_values=False)


def pipeline(c, spec, cfg, dout):
    """out and every gradient of one forward+backward of the kernels under cfg."""
    out, _, ckpt, saved = ts.forward(c, spec, cfg, for_backward=True)
    g = ts.backward(c, spec, cfg, ckpt, dout, saved=saved)
    return out, g


# -- 1. compiling ahead ----------------------------------------------------------------------
def _warm_job(job):
    """In a worker process: compile (not run) every kernel of one config's forward+backward on
    uninitialized inputs of the shape's sizes: the same specializations as the real call."""
    name, cfg_dict = job
    s = next(s for s in load()["ssd"] if s["name"] == name)
    x = {k: torch.empty_like(v) for k, v in make_inputs(s).items()}
    c = call_of(x)
    spec = spec_of(c)
    cfg = ts.SSDConfig(**cfg_dict)

    def warm(spec_, cfg_, kind, a, grid):
        names = [n for n, _ in ts.kernel_params(spec_, kind)]
        ts.kernel(spec_, cfg_, kind).warmup(*[a[n] for n in names], grid=grid,
                                            **ts.launch_config(cfg_, kind))

    ts._launch = warm
    t0 = time.time()
    try:
        pipeline(c, spec, cfg, torch.empty_like(x["x"]))
        return None, time.time() - t0
    except Exception as e:  # recorded; the timing step skips it too
        return f"{type(e).__name__}: {str(e)[:300]}", time.time() - t0


def compile_ahead(jobs_list, procs):
    t0 = time.time()
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        res = pool.map(_warm_job, jobs_list, chunksize=1)
    errs = [(j, e) for j, (e, _) in zip(jobs_list, res) if e]
    print(f"compiled {len(jobs_list)} configs in {time.time() - t0:.0f} s with {procs} processes; "
          f"{len(errs)} failed", flush=True)
    for j, e in errs[:10]:
        print(f"  failed {j[0]} {j[1]}: {e[:200]}", flush=True)


# -- 2. timing ---------------------------------------------------------------------------------
def bench(f):
    return do_bench(f, warmup=5, rep=30, return_mode="median")


def time_config(c, spec, cfg, dout, kinds, ref):
    seen, (out, g) = record(lambda: pipeline(c, spec, cfg, dout))
    ms = {}
    for kind, cfg_, a, grid in seen:
        if kind in kinds:
            ms[kind] = bench(lambda: ts._launch(spec, cfg_, kind, a, grid))
    err = {"out": rel(out, ref[0])}
    err.update({n: rel(v, ref[1][n]) for n, v in g.items() if v is not None})
    return ms, err


def sweep_shape(s, qs, peer):
    x = make_inputs(s)
    dout = torch.randn_like(x["x"])
    c = call_of(x)
    spec = spec_of(c)
    shipped = ts.default_config(spec, c.batch, c.heads)
    ref = pipeline(c, spec, shipped, dout)
    row = {"shipped": dataclasses.asdict(shipped), "q": {}}
    best_cfgs = []
    for q in qs:
        base = chunk_base(spec, c.batch, c.heads, q)
        rq = {"base": dataclasses.asdict(base)}
        best = {}
        for group, overrides in grids().items():
            rows = []
            for o in overrides:
                cfg = dataclasses.replace(base, **o)
                try:
                    ms, err = time_config(c, spec, cfg, dout, TIMED[group], ref)
                except Exception as e:
                    rows.append({**o, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                    continue
                tot = sum(ms.values())
                rows.append({**o, "ms": ms, "total_ms": tot, "err": err})
                print(f"  q{q} {group} {o}: {tot:.3f} ms {ms}; max rel diff "
                      f"{max(err.values()):.2e}", flush=True)
            ok = [r for r in rows if "total_ms" in r]
            if ok:
                b = min(ok, key=lambda r: r["total_ms"])
                best[group] = ({k: b[k] for k in overrides[0]}, b["total_ms"])
            rq[group] = rows
        # the better forward at this q: fwdy alone, or fstate + fouty (fstate from 'walks')
        fw_two = best["fouty"][1] + next(r["ms"]["fstate"] for r in rq["walks"]
                                          if "ms" in r and {k: r[k] for k in best["walks"][0]}
                                          == best["walks"][0])
        use_two = fw_two <= best["fwdy"][1]
        cfg = dataclasses.replace(base, **best["walks"][0], **best["dbcs"][0], **best["bwdx"][0],
                                  **(best["fouty"][0] if use_two else {}),
                                  **({} if use_two else best["fwdy"][0]))
        if not use_two:  # fwdy's own block_p / warps replace the walks' (dstate shares them)
            cfg = dataclasses.replace(cfg, fwd_kernels=1)
        dstate = next(r["ms"]["dstate"] for r in rq["walks"] if "ms" in r and
                      {k: r[k] for k in best["walks"][0]} == best["walks"][0])
        est = ((fw_two if use_two else best["fwdy"][1]) + dstate + best["dbcs"][1]
               + best["bwdx"][1])
        rq["best"] = dataclasses.asdict(cfg)
        rq["best_sum_ms"] = est
        print(f"== q{q} best {cfg}: forward {'fstate+fouty' if use_two else 'fwdy'}, "
              f"kernels timed alone summed {est:.3f} ms", flush=True)
        best_cfgs.append((f"chunk_q{q}", cfg))
        row["q"][q] = rq
    row["fb"] = compare(s, x, dout, {"ssmgen_shipped": shipped, **dict(best_cfgs)}, peer)
    return row


def compare(s, x, dout, impl, peer):
    """3. forward+backward through the public call, side by side: do_bench medians, profiled
    kernel sums, peak memory."""
    fns = {n: (lambda cfg: lambda **a: ssmgen.mamba_chunk_scan_combined(
        chunk_size=s["chunk"], dt_softplus=True, backend="triton", config=cfg, **a))(cfg)
        for n, cfg in impl.items()}
    if peer is not None:
        fns["mamba_ssm"] = lambda **a: peer.mamba_chunk_scan_combined(
            chunk_size=s["chunk"], dt_softplus=True, **a)
    fb_rows = {}
    for n, fn in fns.items():
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}

        def fb():
            torch.autograd.grad(fn(**leaves), list(leaves.values()), dout)

        fb()
        t = do_bench(fb, warmup=10, rep=100, return_mode="median")
        rows, kern = breakdown(fn, x, dout)
        mb = peak_mb(fb)
        fb_rows[n] = {"fb_ms_median": t, "kernel_ms": kern, "peak_mb": mb, "kernels": rows[:12]}
        print(f"  f+b {n}: {t:.3f} ms median, {kern:.3f} ms of kernels, peak {mb:.0f} MB",
              flush=True)
        for r in rows[:8]:
            print(f"      {r['ms']:8.4f} ms x{r['calls']} {r['kernel'][:100]}", flush=True)
    return fb_rows


def main():
    out_path = sys.argv[1]
    names = sys.argv[2:] or [s["name"] for s in load()["ssd"]]
    qs = [int(q) for q in os.environ.get("SWEEP_Q", "64,128").split(",")]
    shapes = [s for s in load()["ssd"] if s["name"] in names]
    procs = int(os.environ.get("SWEEP_JOBS", str(max(1, (os.cpu_count() or 2) - 2))))
    peer = peer_import("mamba_ssm.ops.triton.ssd_combined")
    if "SWEEP_COMPARE" in os.environ:
        res = {"device": torch.cuda.get_device_name(), "shapes": {}}
        wanted = json.loads(os.environ["SWEEP_COMPARE"])
        cfgs, jobs = {}, []
        for s in shapes:
            x = make_inputs(s)
            c = call_of(x)
            shipped = ts.default_config(spec_of(c), c.batch, c.heads)
            cfgs[s["name"]] = {"ssmgen_shipped": shipped, **{
                n: dataclasses.replace(shipped, **o) for n, o in wanted.items()}}
            jobs += [(s["name"], dataclasses.asdict(v)) for v in cfgs[s["name"]].values()]
            del x, c
        compile_ahead(jobs, procs)
        for s in shapes:
            print(f"=== {s['name']}", flush=True)
            x = make_inputs(s)
            dout = torch.randn_like(x["x"])
            res["shapes"][s["name"]] = {"configs": {n: dataclasses.asdict(v) for n, v in
                                                    cfgs[s["name"]].items()},
                                        "fb": compare(s, x, dout, cfgs[s["name"]], peer)}
            with open(out_path, "w") as f:
                json.dump(res, f, indent=1)
            del x, dout
            torch.cuda.empty_cache()
        return
    jobs = []
    for s in shapes:
        x = {k: v for k, v in make_inputs(s).items()}
        c = call_of(x)
        spec = spec_of(c)
        for q in qs:
            base = chunk_base(spec, c.batch, c.heads, q)
            jobs.append((s["name"], dataclasses.asdict(base)))
        del x, c
    torch.cuda.empty_cache()
    compile_ahead(jobs, procs)  # the base configs first: every later job reuses their kernels
    more = []
    for s in shapes:
        x = make_inputs(s)
        c = call_of(x)
        spec = spec_of(c)
        more.append((s["name"], dataclasses.asdict(ts.default_config(spec, c.batch, c.heads))))
        for q in qs:
            base = chunk_base(spec, c.batch, c.heads, q)
            for overrides in grids().values():
                more += [(s["name"], dataclasses.asdict(dataclasses.replace(base, **o)))
                         for o in overrides]
        del x, c
    torch.cuda.empty_cache()
    compile_ahead(more, procs)
    res = {"device": torch.cuda.get_device_name(), "shapes": {}}
    for s in shapes:
        print(f"=== {s['name']}", flush=True)
        res["shapes"][s["name"]] = sweep_shape(s, qs, peer)
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
