"""GPU experiment: hand-edited variants of the SSD kernels (benchmarks/exp/ssd_variants.py),
each launched alone on the ssd_1.3b call's arguments (recorded from the shipped launch), timed
with do_bench (median), outputs compared with the shipped kernel's (variants that compute the
same thing) or marked timing-only (variants reading proxies for buffers that do not exist yet).
VARIANTS=run1 / run2: the variants of a8da55d's kernels, before fwdy / dstatey, results in
results/NVIDIA_H100_80GB_HBM3/ssd_yi_v1/variants (each also at maxnreg 168 and 200; run1 was
timed at 168 only); VARIANTS=ablations: what each part of
acc96e7's bwdx and dstatey costs; VARIANTS=ablations2 (default): the inter-block dx moved
from bwdx to dbc, on ea07fb6's kernels; results of both in ssd_yi_v1/ablations. The string
edits match the source of the commit named: at a later one they may no longer apply.

Usage: python benchmarks/exp/ssd_variant_timing.py OUT.json
"""
import json
import os
import re
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, __file__.rsplit("/", 2)[0])
sys.path.insert(0, __file__.rsplit("/", 1)[0])
import ssd_variants as sv  # noqa: E402
from ssd_bench import make_inputs  # noqa: E402
from ssd_pass2_sweep import record as record_with_result  # noqa: E402

from ssmgen import render  # noqa: E402
from ssmgen.backends import triton_ssd as ts  # noqa: E402
from ssmgen.ssd import _normalize  # noqa: E402
from ssmgen.ssd_kernels import spec_of  # noqa: E402
from ssmgen.suite import load  # noqa: E402

def record(fn):
    return record_with_result(fn)[0]


EXACT = {("bwdx", "T"), ("dbc", "T"), ("fwd", "T"), ("bwdx", "base"), ("dbc", "base"),
         ("fwd", "base"), ("dstatey", "base")}
OUTS = {"fwd": ("out_ptr", "ckpt_ptr"), "bwdx": ("dx_ptr", "dz_ptr", "ddt_ptr", "dA_ptr", "dD_ptr", "ddtb_ptr"),
        "dbc": ("dB_ptr", "dC_ptr"), "dstatey": ("dckpt_ptr", "sig_ptr")}
MAXNREG = ([None, 168, 200] if os.environ.get("VARIANTS", "ablations2") in ("run1", "run2")
           else [None])


def main():
    out_path = sys.argv[1]
    s = next(r for r in load()["ssd"] if r["name"] == "ssd_1.3b_bf16")
    x = make_inputs(s)
    dout = torch.randn_like(x["x"])
    c = _normalize(**x, chunk_size=s["chunk"], dt_softplus=True, check_values=False)
    spec = spec_of(c)
    cfg = ts.walk_config(spec, c.batch, c.heads)
    box = []
    seen = record(lambda: box.append(ts.forward(c, spec, cfg, for_backward=True)))
    ckpt, yi = box[0][2], box[0][3]
    seen += record(lambda: box.append(ts.backward_states(c, spec, cfg, ckpt.shape[2],
                                                         dout.contiguous(), ckpt=ckpt)))
    dckpt, sig = box[1][0], box[1][2]
    seen += record(lambda: ts.backward_grads(c, spec, cfg, ckpt, dckpt, dout.contiguous(), yi,
                                             sig))
    res = {"device": torch.cuda.get_device_name(), "config": repr(cfg), "rows": []}
    tables = {"run1": sv.RUN1, "run2": sv.RUN2, "ablations": sv.ABLATIONS,
              "ablations2": sv.ABLATIONS2}[os.environ.get("VARIANTS", "ablations2")]
    for kind, kcfg, a, grid in seen:
        if kind not in tables:
            continue
        if kind in ("fwd", "fwdy"):  # the checkpoints the backward reads: work on a copy
            a = dict(a, ckpt_ptr=a["ckpt_ptr"].clone())
        if kind == "dstatey":
            a = dict(a, dckpt_ptr=a["dckpt_ptr"].clone())
        names = [n for n, _ in ts.kernel_params(spec, kind)]
        base_src = ts.render_source(spec, kcfg, kind)
        lc = ts.launch_config(kcfg, kind)
        ref = None
        for vname, vf in tables[kind].items():
            src = vf(base_src)
            stem = f"{ts.kernel_name(spec, kcfg, kind)}_x{vname}"
            src = re.sub(r"def ssmgen_ssd_\w+\(", f"def {stem}(", src)
            fn = getattr(render.load_module("triton", stem, src), stem)
            for mr in MAXNREG:
                opts = dict(lc, **({} if mr is None else {"maxnreg": mr}))
                row = {"kind": kind, "variant": vname, "maxnreg": mr, "opts": opts}
                args = [a[n] for n in names]
                try:
                    for o in OUTS[kind]:
                        if a.get(o) is not None:
                            a[o].fill_(float("nan"))
                    fn[grid](*args, **opts)
                    torch.cuda.synchronize()
                    outs = {o: a[o].clone() for o in OUTS[kind] if a.get(o) is not None}
                    if (kind, vname) in EXACT:
                        if ref is None:
                            ref = outs
                        row["rel_err_vs_base"] = {
                            o: ((outs[o].double() - ref[o].double()).norm() / ref[o].double().norm()).item()
                            for o in outs}
                        row["nan"] = any(bool(outs[o].isnan().any()) for o in outs)
                    else:
                        row["timing_only"] = True
                    row["ms"] = do_bench(lambda: fn[grid](*args, **opts), warmup=10, rep=60,
                                         return_mode="median")
                    try:
                        k = fn.device_caches[torch.cuda.current_device()][0]
                        comp = list(k.values())[-1]
                        row["regs"], row["spills"] = comp.n_regs, comp.n_spills
                    except Exception:  # triton internals: the numbers are optional
                        pass
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                print(json.dumps(row), flush=True)
                res["rows"].append(row)
                json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
