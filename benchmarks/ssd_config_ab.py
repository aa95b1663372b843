"""GPU: SSD configs named in $CONFIGS (overrides of the shipped default), each config's kernels
timed alone, then forward+backward through the public call side by side (with mamba-ssm's
Triton SSD where PEER=1), on the suite's ssd shapes (D_STATE: another d_state for all of them).

Run a second time with PYTHONPATH at an install of an earlier commit (CONFIGS='{"base": {}}',
PEER=0; see results/NVIDIA_H100_80GB_HBM3/ssd_ckpt_v1/session.sh), it gives that commit's
default in the same device call.

1. The configs are compiled first in a pool of processes (ssd_sweep_common.compile_ahead).
2. Per config: every kernel of one forward+backward timed alone (median of do_bench, the
   launches of one real forward+backward replayed) and the largest relative difference of out
   and every gradient from the first config's.
   Also the forward alone with and without checkpoints (kinds fwd and fwdo).
3. compare: do_bench medians, profiled kernel sums and peak memory of the public call.

Usage: python benchmarks/ssd_config_ab.py OUT.json [shape names...]
Environment: CONFIGS (JSON {name: {field: value}}, default the shipped config alone), PEER
(1: mamba-ssm too), D_STATE, SWEEP_JOBS.
"""
import dataclasses
import json
import os
import sys

import torch

from ssmgen.backends import triton_ssd as ts
from ssmgen.bench import peer_import
from ssmgen.ssd_kernels import spec_of
from ssmgen.suite import load

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssd_bench import make_inputs, sweep_shapes  # noqa: E402
from ssd_sweep_common import (call_of, compare, compile_ahead, pipeline,  # noqa: E402
                              shipped_config)
from ssd_walk_sweep import bench, time_config  # noqa: E402


def main():
    out_path = sys.argv[1]
    names = sys.argv[2:] or [s["name"] for s in load()["ssd"]]
    overrides = json.loads(os.environ.get("CONFIGS", '{"default": {}}'))
    peer = peer_import("mamba_ssm.ops.triton.ssd_combined") if os.environ.get("PEER") == "1" \
        else None
    shapes = [s for s in load()["ssd"] if s["name"] in names]
    if os.environ.get("D_STATE"):
        n = int(os.environ["D_STATE"])
        shapes = [dict(s, d_state=n, name=f"{s['name']}_n{n}") for s in shapes]
    plan, jobs = {}, []
    for s in shapes:
        shipped = shipped_config(s)
        plan[s["name"]] = {n: dataclasses.replace(shipped, **o) for n, o in overrides.items()}
        jobs += [(s, dataclasses.asdict(v)) for v in plan[s["name"]].values()]
    compile_ahead(jobs)

    def per_shape(s, _):
        print(f"=== {s['name']}", flush=True)
        torch.manual_seed(0)
        x = make_inputs(s)
        dout = torch.randn_like(x["x"])
        c = call_of(x)
        spec = spec_of(c)
        cfgs = plan[s["name"]]
        ref = pipeline(c, spec, next(iter(cfgs.values())), dout)
        row = {"kernels": {}}
        for n, cfg in cfgs.items():
            try:
                ms, err = time_config(c, spec, cfg, dout, ref)
            except Exception as e:  # recorded and skipped
                row["kernels"][n] = {"config": dataclasses.asdict(cfg),
                                     "error": f"{type(e).__name__}: {str(e)[:300]}"}
                print(f"  {n}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            tot = sum(ms.values())
            # the forward alone, saving the checkpoints (kind fwd) or not (fwdo, inference)
            fw = {k: bench(lambda: ts.forward(c, spec, cfg, checkpoints=k == "fwd_ckpt_ms"))
                  for k in ("fwd_ckpt_ms", "fwdo_ms")}
            row["kernels"][n] = {"config": dataclasses.asdict(cfg), "ms": ms, "total_ms": tot,
                                 "err": err, **fw}
            print(f"  {n}: {tot:.3f} ms {ms}; max rel diff {max(err.values()):.2e}; forward "
                  f"{fw['fwd_ckpt_ms']:.3f} with checkpoints, {fw['fwdo_ms']:.3f} without",
                  flush=True)
        row["fb"] = compare(s, x, dout, {n: cfg for n, cfg in cfgs.items()
                                         if "error" not in row["kernels"][n]}, peer)
        return row

    sweep_shapes(out_path, None, per_shape, shapes)


if __name__ == "__main__":
    main()
