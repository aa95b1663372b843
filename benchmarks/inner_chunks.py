"""Inner chunks (CUDA backward config `ic`) on suite shapes: for each (chunk_len, ic) the
backward kernel time at the shape's record config with only chunk_len / ic changed (CUDA events,
L2 flushed, median of bwd_ab.REPS), the peak memory of forward+backward through the public call
with that config (bench.peak_mb), and every gradient against the record config's.
Usage: python3 benchmarks/inner_chunks.py OUT.json [SHAPE:CHUNK:IC ...]"""
import dataclasses
import json
import os
import sys

import torch

import ssmgen
from ssmgen.backends import cuda_backend as cb
from ssmgen.bench import peak_mb
from ssmgen.inputs import normalize
from ssmgen.suite import make_inputs, scan_shapes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bwd_ab import record_config, rel, timed  # noqa: E402

DEFAULT = ["m1_n128_bf16:128:0", "m1_n128_bf16:256:0", "m1_n128_bf16:256:128",
           "m1_n128_bf16:256:64", "m1_n64_bf16:256:0", "m1_n64_bf16:256:128",
           "m1_130m_bf16:128:0", "m1_130m_bf16:256:0", "m1_130m_bf16:256:128"]


def main(out, cases):
    shapes = {s["name"]: s for s in scan_shapes()}
    rows, ref = [], {}
    for case in cases:
        name, chunk, ic = case.split(":")
        chunk, ic = int(chunk), int(ic)
        x = make_inputs(shapes[name])
        rec_chunk, cfg = record_config(normalize(*x, delta_softplus=True))
        cfg = dataclasses.replace(cfg, bwd=dataclasses.replace(cfg.bwd, ic=ic))
        call = normalize(*x, delta_softplus=True, chunk_len=chunk)
        row = dict(case=case, record_chunk=rec_chunk, bwd=cb.kernel_name(call.spec, cfg.bwd, "bwd"))
        try:
            torch.manual_seed(0)
            dout = torch.randn_like(call.u)
            _, _, ckpt = cb.forward(call, cfg, True)
            row["bwd_ms"], g = timed(call, cfg, ckpt, dout)
            g = {n: v for n, v in g.items() if torch.is_tensor(v)}
            row["nan"] = any(torch.isnan(v).any().item() for v in g.values())
            if name not in ref:
                ref[name] = g
            row["rel_vs_first"] = {n: rel(v, ref[name][n]) for n, v in g.items() if n in ref[name]}
            del g, ckpt
            leaves = [t.detach().requires_grad_(True) if t is not None else None for t in x]
            conf = {"chunk_len": chunk, **cfg.to_dict()}

            def fb():
                torch.autograd.backward(ssmgen.selective_scan(
                    *leaves, delta_softplus=True, backend="cuda", config=conf), dout)

            fb()
            row["fwdbwd_peak_mb"] = peak_mb(fb)
        except Exception as e:   # reported; the other cases still run
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
        torch.cuda.empty_cache()
    json.dump(rows, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or DEFAULT)
