"""Applies autotune.pick (MEMORY_SLACK: longer chunks within 5% of the fastest backward) to the
shipped CUDA scan records of this tune, from their own timed candidates (no new measurements).
Run from the repository root: python benchmarks/results/NVIDIA_H100_80GB_HBM3/bwd_v3/reselect.py"""
import json

from ssmgen import autotune
from ssmgen.backends import cuda_backend as cb
from ssmgen.spec import ScanSpec

P = "autotune_cache/nvidia_h100_80gb_hbm3.json"
d = json.load(open(P))
for r in d["records"]:
    if r["backend"] != "cuda" or "fwd_ms" not in r or "reselected" in r:
        continue
    f, b = autotune.pick(r["candidates"], cb.KernelConfig)
    new = {"chunk_len": b["chunk_len"], "fwd": f["config"], "bwd": b["config"]}
    if new != r["config"]:
        spec = json.loads(r["spec"])
        print(f"{r['spec_key']} {r['shape']}: chunk {r['config']['chunk_len']} -> "
              f"{b['chunk_len']}, bwd {r['bwd_ms']:.3f} -> {b['ms']:.3f} ms")
        r["reselected"] = (f"chosen again from this record's candidates by autotune.pick "
                           f"(MEMORY_SLACK {autotune.MEMORY_SLACK}): was chunk "
                           f"{r['config']['chunk_len']}, {r['bwd_ms']:.3f} ms")
        spec["chunk_len"] = b["chunk_len"]
        r["spec"] = ScanSpec(**spec).to_json()
        r.update(config=new, fwd_ms=f["ms"], bwd_ms=b["ms"])
json.dump(d, open(P, "w"), indent=1, sort_keys=True)
