"""A/B of the CUDA backward kernel on the suite shapes at their shipped records' backward configs:
the previous template's kernel (sources rendered from the commit before the change, in a JSON
file {kernel name: {source, smem}}), the new kernel with element loads and with 16-byte vectors where
the call allows. Kernel times (CUDA events, L2 flushed before each run, median of REPS), and
every gradient of the new kernels against the old kernel's on the same inputs.
Usage: python3 benchmarks/bwd_ab.py OLD_SOURCES.json > ab.json"""
import json
import sys

import torch

from ssmgen import autotune
from ssmgen.backends import cuda_backend as cb, cuda_runtime
from ssmgen.inputs import normalize
from ssmgen.suite import make_inputs, scan_shapes

REPS = 20
loaded, vec_ok = cb._loaded, cb.vector_ok


def old_loaded(call, k, kind, old_src={}):
    if kind != "bwd":
        return loaded(call, k, kind)
    if not old_src:
        old_src.update(json.load(open(sys.argv[1])))
    name = cb.kernel_name(call.spec, k, "bwd")
    old = old_src[name]   # its own shared-memory size: the occupancy it ran at
    return cuda_runtime.function(name + "_old", old["source"].replace(name, name + "_old"),
                                 call.u.device.index or 0, old["smem"]), old["smem"]


def median_ms(fn):
    """(median ms of fn over REPS runs, L2 flushed before each: the tuner's timer; fn's first
    result)."""
    first = fn()   # compile, warm
    return autotune.cuda_event_timer(fn, warmup=0, reps=REPS), first


def timed(call, cfg, ckpt, dout):
    return median_ms(lambda: cb.backward(call, cfg, ckpt, dout))


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


RECS = [r for r in json.load(open("autotune_cache/nvidia_h100_80gb_hbm3.json"))["records"]
        if r.get("backend") == "cuda" and "bwd_ms" in r]


def record_config(call):
    """The shipped record's (chunk_len, ScanConfig) for this shape, whatever its template hash."""
    for r in RECS:
        if (r["spec_key"] == autotune.tuning_key(call.spec)
                and r["shape"] == dict(batch=call.batch, dim=call.dim, seqlen=call.seqlen)):
            c = dict(r["config"])
            chunk = c.pop("chunk_len")
            return chunk, cb.ScanConfig.from_dict(c)
    raise LookupError(call.spec)


def prepared(shape):
    """(call, config, dout, checkpoints) of a suite shape at its record's configs."""
    x = make_inputs(shape)
    chunk, cfg = record_config(normalize(*x, delta_softplus=True))
    call = normalize(*x, delta_softplus=True, chunk_len=chunk)
    torch.manual_seed(0)
    dout = torch.randn_like(call.u)
    _, _, ckpt = cb.forward(call, cfg, True)
    return call, cfg, dout, ckpt


def main():
    for shape in scan_shapes():
        call, cfg, dout, ckpt = prepared(shape)
        row = {"shape": shape["name"], "bwd": cb.kernel_name(call.spec, cfg.bwd, "bwd"),
               "splits": cfg.bwd.splits}
        try:
            cb._loaded = old_loaded
            row["old_ms"], g_old = timed(call, cfg, ckpt, dout)
        finally:
            cb._loaded = loaded
        cb.vector_ok = lambda *a: False
        row["new_elem_ms"], g_e = timed(call, cfg, ckpt, dout)
        cb.vector_ok = vec_ok
        row["new_vec_ms"], g_v = timed(call, cfg, ckpt, dout)
        row["rel_vs_old"] = {f"{n}_{w}": rel(g[n], g_old[n]) for w, g in (("elem", g_e), ("vec", g_v))
                             for n in g_old if g_old[n] is not None and torch.is_tensor(g_old[n])}
        row["nan"] = any(torch.isnan(g[n]).any().item() for g in (g_e, g_v) for n in g
                         if g[n] is not None and torch.is_tensor(g[n]))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
