"""GPU: the CUDA SSD kernels (backends/cuda_ssd.py) on the suite's `ssd` shapes, each kernel
alone over a small config grid, next to the Triton SSD kernels' default config in the same
process; out of every CUDA config against the Triton forward's (relative norm of the
difference). Medians of triton.testing.do_bench.

Usage: python benchmarks/ssd_cuda_sweep.py OUT.json [shape names...]
"""
import sys

import torch

from ssmgen.backends import cuda_ssd as cs, triton_ssd as ts
from ssmgen.ssd import normalize_ssd
from ssmgen.ssd_kernels import spec_of

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ssd_bench import make_inputs, sweep_shapes, time_fwd_dstate  # noqa: E402

# (block_q, block_p, threads) for fwd and dstate; (block_q, bwd_block_p, heads, threads) for bwd
FWD_GRID = [(32, 16, 128), (32, 32, 128), (32, 64, 128), (32, 16, 256), (32, 32, 256),
            (64, 16, 128), (64, 32, 256), (64, 64, 256), (16, 16, 64)]
BWD_GRID = [(32, 16, 1, 256), (32, 16, 2, 256), (32, 32, 2, 256), (32, 16, 4, 256),
            (32, 32, 4, 256), (64, 16, 1, 256), (64, 16, 2, 256), (32, 16, 2, 128),
            (16, 16, 4, 128)]


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def sweep(s, bench):
    x = make_inputs(s)
    dout = torch.randn_like(x["x"])
    c = normalize_ssd(chunk_size=s["chunk"], dt_softplus=True, **x)
    spec = spec_of(c)
    rows = []
    tcfg = ts.walk_config(spec, c.batch, c.heads)
    out_t, _, ck, yi = ts.forward(c, spec, tcfg, for_backward=True)
    r = {"backend": "triton", "config": tcfg.to_dict(),
         "fwd_ms": bench(lambda: ts.forward(c, spec, tcfg))}
    dck, _, sig = ts.backward_states(c, spec, tcfg, ck.shape[2], dout,
                                     ckpt=None if yi is None else ck)
    r["dstate_ms"] = bench(lambda: ts.backward_states(c, spec, tcfg, ck.shape[2], dout))
    r["bwd_ms"] = bench(lambda: ts.backward_grads(c, spec, tcfg, ck, dck, dout, yi, sig))
    g_t = ts.backward_grads(c, spec, tcfg, ck, dck, dout, yi, sig)
    del ck, dck
    rows.append(r)
    print(f"  {s['name']} triton {tcfg.tag('fwd')} / {tcfg.tag('bwd')}: {r}", flush=True)
    for q, p, t in FWD_GRID:
        # bwd's smallest tiles, so that the check of all three kernels passes at block_q 64
        cfg = cs.CudaSSDConfig(block_q=q, block_p=p, threads=t, bwd_block_p=16,
                               heads_per_program=1)
        r = {"backend": "cuda", "kind": "fwd+dstate", "config": cfg.to_dict()}
        try:
            cfg.check(spec)
            out, _ = time_fwd_dstate(c, spec, cfg, dout, bench, r)
            r["out_rel_vs_triton"] = rel(out, out_t)
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(r)
        print(f"  {s['name']} cuda {cfg.tag('fwd')}: {r}", flush=True)
    for q, p, hb, t in BWD_GRID:
        cfg = cs.CudaSSDConfig(block_q=q, block_p=32, threads=128, bwd_block_p=p,
                               heads_per_program=hb, bwd_threads=t)
        r = {"backend": "cuda", "kind": "bwd", "config": cfg.to_dict()}
        try:
            cfg.check(spec)
            _, _, ckpt, _ = ts.forward(c, spec, cfg)
            dckpt, _, _ = ts.backward_states(c, spec, cfg, ckpt.shape[2], dout)
            g = ts.backward_grads(c, spec, cfg, ckpt, dckpt, dout)
            r.update({f"d{k}_rel_vs_triton": rel(v, g_t[k]) for k, v in g.items()
                      if v is not None and g_t.get(k) is not None})
            r["bwd_ms"] = bench(lambda: ts.backward_grads(c, spec, cfg, ckpt, dckpt, dout))
            del ckpt, dckpt
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(r)
        print(f"  {s['name']} cuda {cfg.tag('bwd')}: {r}", flush=True)
        torch.cuda.empty_cache()
    return rows


def main(out_path, names=()):
    sweep_shapes(out_path, names, sweep)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
