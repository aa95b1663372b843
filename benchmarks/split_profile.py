"""Where a split scan's time goes: per-kernel CUDA-event times (pre-pass and main kernel, forward
and backward) of the CUDA backend on one suite shape, for several split counts.

Usage: python benchmarks/split_profile.py SHAPE CHUNK FWD BWD [SPLITS...] > out.json
FWD / BWD: kernel configs as threads,lpc,tl,tb (e.g. 128,4,32,8). Medians of 15 runs, inputs as
suite.json draws them, L2 flushed before each run.
"""
import json
import statistics
import sys

import torch

from ssmgen.backends import cuda_backend as cb
from ssmgen.inputs import normalize
from ssmgen.suite import make_inputs, scan_shapes

name, chunk = sys.argv[1], int(sys.argv[2])
fk, bk = (cb.KernelConfig(*map(int, a.split(","))) for a in sys.argv[3:5])
splits = [int(s) for s in sys.argv[5:]] or [1, 2, 4, 8, 16]
shape = next(s for s in scan_shapes() if s["name"] == name)
x = make_inputs(shape)
call = normalize(*x, delta_softplus=True, chunk_len=chunk)
dout = torch.randn_like(call.u)
flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")

times: dict = {}
run = cb._run


def timed_run(call_, k, kind, tensors, extra, plan):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    run(call_, k, kind, tensors, extra, plan)
    b.record()
    times.setdefault(kind, []).append((a, b))


cb._run = timed_run
rows = []
for s in splits:
    cfg = cb.ScanConfig(cb.dataclasses.replace(fk, splits=s), cb.dataclasses.replace(bk, splits=s))
    _, _, ckpt = cb.forward(call, cfg, True)
    for _ in range(3):  # compile and warm up
        cb.forward(call, cfg, False)
        cb.backward(call, cfg, ckpt, dout)
    torch.cuda.synchronize()
    times.clear()
    for _ in range(15):
        flush.zero_()
        cb.forward(call, cfg, False)
        flush.zero_()
        cb.backward(call, cfg, ckpt, dout)
    torch.cuda.synchronize()
    row = {"splits": s,
           "n_splits": {k: cb.split_plan(call, getattr(cfg, k), k)[0] for k in ("fwd", "bwd")}}
    for kind, evs in times.items():
        row[kind + "_ms"] = statistics.median(a.elapsed_time(b) for a, b in evs)
    rows.append(row)
    print(json.dumps(row), file=sys.stderr)
print(json.dumps({"shape": name, "chunk": chunk, "fwd": fk.tag(), "bwd": bk.tag(), "rows": rows},
                 indent=1))
