"""GPU experiment: what each part of the SSD walk (kind dwalk, the default since bwd_kernels=3)
costs. Hand-edited copies of the rendered dwalk for the ssd_1.3b call, each launched alone on
the arguments the default's backward launches it with (recorded), timed with do_bench (median).
Timing only: the edited kernels compute something else. The string edits match the template at
the commit that added this script.

Usage: python benchmarks/exp/walk_ablations.py OUT.json
"""
import json
import re
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, __file__.rsplit("/", 2)[0])
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ssd_variants import rep  # noqa: E402
from ssd_bench import make_inputs  # noqa: E402
from ssd_pass2_sweep import record  # noqa: E402
from ssd_sweep_common import call_of, pipeline  # noqa: E402

from ssmgen import render  # noqa: E402
from ssmgen.backends import triton_launch, triton_ssd as ts  # noqa: E402
from ssmgen.ssd_kernels import spec_of  # noqa: E402
from ssmgen.suite import load  # noqa: E402


def sub(old, new):
    return lambda src: rep(src, old, new)


S_IN = re.compile(r"S_in = tl\.load\(ckpt_ptr.*?\.to\(tl\.float32\)\n\s*sig = .*?\n", re.S)
VARIANTS = {
    "base": lambda s: s,
    # sigma's checkpoint load and its product with dS
    "no_sigma": lambda s: S_IN.sub("sig = 0.0\n", s),
    # dS saved for dbc
    "no_dS_store": lambda s: re.sub(r"tl\.store\(dckpt_ptr.*?mask=m_pn\)\n", "\n", s, count=1,
                                    flags=re.S),
    # the forward's Yi read (Oy)
    "no_Yi": sub("Yi = tl.load(yi_ptr + io_off, mask=m_qp, other=0.0).to(tl.float32)",
                 "Yi = dout"),
    # y before the gate read (dz)
    "no_ypre": sub("y = tl.load(yp_ptr + io_off, mask=m_qp, other=0.0).to(tl.float32)",
                   "y = dout"),
    # B dS^T (dx's inter-block part and Tx)
    "no_BdS": sub("BdS = _dot(Bt, tl.trans(dS.to(Bt.dtype)))", "BdS = xt.to(tl.float32)"),
    # the per-step partials' stores
    "no_rg_store": lambda s: rep(rep(s, "tl.store(rp_ptr + part, r, mask=mq)", ""),
                                 "tl.store(gp_ptr + part, gv, mask=mq)",
                                 "tl.store(gp_ptr + part, gv + r, mask=mq)"),
}


def time_variants(shape, variants, kind="dwalk", check=False):
    """{variant: ms} of hand-edited copies of one kernel of the default config's
    forward+backward on the suite shape named shape, each launched alone on the arguments the
    backward launches it with (recorded). check: also the variant's outputs against the
    unedited kernel's (largest relative difference over the tensors it writes), for edits that
    should compute the same thing."""
    s = next(r for r in load()["ssd"] if r["name"] == shape)
    x = make_inputs(s)
    dout = torch.randn_like(x["x"])
    c = call_of(x)
    spec = spec_of(c)
    cfg = ts.walk_config(spec, c.batch, c.heads)
    seen, _ = record(lambda: pipeline(c, spec, cfg, dout))
    kind, kcfg, a, grid = next(r for r in seen if r[0] == kind)
    names = [n for n, _ in ts.kernel_params(spec, kind)]
    outs = [n for n in names if n in OUTPUTS.get(kind, ())]
    base = ts.render_source(spec, kcfg, kind)
    lc = ts.launch_config(kcfg, kind)
    rows, ref = {}, None
    for vname, vf in variants.items():
        stem = f"{ts.kernel_name(spec, kcfg, kind)}_x{vname}"
        src = re.sub(r"def ssmgen_ssd_\w+\(", f"def {stem}(", vf(base))
        try:
            fn = getattr(render.load_module("triton", stem, src), stem)
            args = [a[n] for n in names]
            if check:
                for n in outs:
                    a[n].fill_(float("nan"))
                triton_launch.launch(fn, grid, args, **lc)
                got = {n: a[n].clone() for n in outs}
                ref = ref or got
                diff = max(((got[n].double() - ref[n].double()).norm()
                            / ref[n].double().norm().clamp_min(1e-30)).item() for n in outs)
            ms = do_bench(lambda: triton_launch.launch(fn, grid, args, **lc), warmup=5, rep=50,
                          return_mode="median")
        except Exception as e:  # recorded, the others still run
            rows[vname] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"  {shape} {kind} {vname}: {rows[vname]}", flush=True)
            continue
        rows[vname] = {"ms": ms, "max_rel_diff": diff} if check else ms
        print(f"  {shape} {kind} {vname}: {ms:.3f} ms"
              + (f", max rel diff {diff:.2e}" if check else ""), flush=True)
    return {"config": repr(cfg), "ms": rows}


# what each kernel writes (compared by time_variants(check=True))
OUTPUTS = {"dwalk": ("dckpt_ptr", "dx_ptr", "dz_ptr", "rp_ptr", "gp_ptr", "dD_ptr")}


def main():
    res = time_variants("ssd_1.3b_bf16", VARIANTS)
    with open(sys.argv[1], "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), **res}, f, indent=1)


if __name__ == "__main__":
    main()
