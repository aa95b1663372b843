"""GPU: the SSD backward as one walk (config.bwd_kernels=3: dwalk + dfin + dbc) against the
shipped split form (dstatey + bwdx + dbc), on the suite's ssd shapes.

1. Every config is compiled first in a pool of processes (they fill Triton's disk cache; the
   timing process then only loads the kernels).
2. Each config's kernels are timed alone (median of do_bench, the launches of one real
   forward+backward replayed), and its output and every gradient are compared with the
   shipped default's (relative norm of the difference).
3. The shipped default, the best walk config per block length and mamba-ssm's Triton SSD run
   forward+backward through the public call in one process: do_bench medians, the summed
   kernel times of a profiled run, peak memory.

Usage: python benchmarks/ssd_walk_sweep.py OUT.json [shape names...]
Environment: SWEEP_Q (block lengths, default "32,64"), SWEEP_JOBS (compile processes).
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
from ssmgen.ssd_kernels import spec_of
from ssmgen.suite import load

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssd_bench import make_inputs  # noqa: E402
from ssd_sweep_common import (call_of, compare, compile_ahead, pipeline,  # noqa: E402
                              shipped_config)
from ssd_pass2_sweep import record, rel  # noqa: E402


def walk_configs(shipped, q):
    """The walk at block length q: its channel block, warps and stages; at q > 32 with dbc at
    32 channels and 8 warps (its [q, N] accumulators grow with q; the best dbcs config at 64
    steps in ssd_chunk_v1), then dbc's other channel blocks and warps under one walk config."""
    prod = lambda **kw: [dict(zip(kw, v)) for v in itertools.product(*kw.values())]  # noqa
    base = dataclasses.replace(shipped, block_q=q, bwd_kernels=3)
    if q > 32:
        base = dataclasses.replace(base, dbc_block_p=32, dbc_warps=8)
    walks = [dataclasses.replace(base, **w)
             for w in prod(walk_block_p=(32, 64), walk_warps=(4, 8), walk_stages=(1, 2))]
    if q > 32:
        walks += [dataclasses.replace(base, walk_block_p=32, walk_warps=8, **d)
                  for d in prod(dbc_block_p=(32, 64), dbc_warps=(4, 8)) if d["dbc_block_p"] == 64
                  or d["dbc_warps"] == 4]
    return walks


def bench(f):
    return do_bench(f, warmup=5, rep=30, return_mode="median")


def time_config(c, spec, cfg, dout, ref):
    """{kind: ms} of every kernel of one forward+backward, and the largest relative difference
    of out and the gradients from ref's."""
    seen, (out, g) = record(lambda: pipeline(c, spec, cfg, dout))
    ms = {}
    for kind, cfg_, a, grid in seen:
        ms[kind] = ms.get(kind, 0.0) + bench(lambda: ts._launch(spec, cfg_, kind, a, grid))
    err = {"out": rel(out, ref[0])}
    err.update({n: rel(v, ref[1][n]) for n, v in g.items() if v is not None})
    return ms, err


def main():
    out_path = sys.argv[1]
    names = sys.argv[2:] or [s["name"] for s in load()["ssd"]]
    qs = [int(q) for q in os.environ.get("SWEEP_Q", "32,64").split(",")]
    shapes = [s for s in load()["ssd"] if s["name"] in names]
    peer = peer_import("mamba_ssm.ops.triton.ssd_combined")
    plan, jobs = {}, []
    for s in shapes:
        shipped = shipped_config(s)
        plan[s["name"]] = (shipped, {q: walk_configs(shipped, q) for q in qs})
        jobs += [(s["name"], dataclasses.asdict(v))
                 for v in [shipped] + [v for q in qs for v in plan[s["name"]][1][q]]]
    compile_ahead(jobs)
    res = {"device": torch.cuda.get_device_name(), "shapes": {}}
    for s in shapes:
        print(f"=== {s['name']}", flush=True)
        shipped, by_q = plan[s["name"]]
        x = make_inputs(s)
        dout = torch.randn_like(x["x"])
        c = call_of(x)
        spec = spec_of(c)
        ref = pipeline(c, spec, shipped, dout)
        ms, _ = time_config(c, spec, shipped, dout, ref)
        row = {"shipped": {"config": dataclasses.asdict(shipped), "ms": ms,
                           "total_ms": sum(ms.values())}, "walk": []}
        print(f"  shipped: {sum(ms.values()):.3f} ms {ms}", flush=True)
        best = {}
        for q, cfgs in by_q.items():
            for cfg in cfgs:
                tag = f"q{q} {cfg.tag('dwalk')} dbc {cfg.tag('dbc')}"
                try:
                    ms, err = time_config(c, spec, cfg, dout, ref)
                except Exception as e:  # recorded and skipped
                    row["walk"].append({"config": dataclasses.asdict(cfg),
                                        "error": f"{type(e).__name__}: {str(e)[:300]}"})
                    print(f"  {tag}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                tot = sum(ms.values())
                row["walk"].append({"config": dataclasses.asdict(cfg), "ms": ms, "total_ms": tot,
                                    "err": err})
                print(f"  {tag}: {tot:.3f} ms {ms}; max rel diff {max(err.values()):.2e}",
                      flush=True)
                if q not in best or tot < best[q][1]:
                    best[q] = (cfg, tot)
        impl = {"ssmgen_shipped": shipped, **{f"walk_q{q}": b[0] for q, b in best.items()}}
        row["best"] = {n: dataclasses.asdict(v) for n, v in impl.items()}
        row["fb"] = compare(s, x, dout, impl, peer)
        res["shapes"][s["name"]] = row
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)
        del x, dout, c, ref
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
