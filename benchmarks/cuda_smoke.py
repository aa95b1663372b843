"""Device smoke check and timing for a backend: fixed cases against the float64 reference
(every output and gradient, all errors reported, not only the first), then forward and
forward+backward times on the suite shapes for the given backends (and the peer if importable).
Usage: python3 benchmarks/cuda_smoke.py [--backends cuda,triton] [--no-check] [--no-time]"""
import argparse
import json
import sys
import time

import torch

sys.path.insert(0, "tests")
import ssmgen  # noqa: E402
from cases import make_inputs  # noqa: E402
from ssmgen.reference import selective_scan_ref  # noqa: E402

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def case(**kw):
    c = dict(dtype=torch.float32, complex=False, N=16, chunk_len=64, L=200, batch=2, dim=40,
             B="var4", B_groups=1, B_complex_tensor=False, C="var4", C_groups=1,
             C_complex_tensor=False, D=True, z=True, delta_bias=True, delta_softplus=True,
             return_last_state=True, noncontig=False)
    c.update(kw)
    return c


CASES = [
    ("f32 all options", case()),
    ("bf16 all options", case(dtype=torch.bfloat16)),
    ("f16 plain", case(dtype=torch.float16, D=False, z=False, delta_bias=False,
                       delta_softplus=False)),
    ("f32 N=5 groups", case(N=5, dim=12, B_groups=3, C_groups=2)),
    ("f32 constant B/C", case(B="constant", C="constant")),
    ("f32 N=64", case(N=64, dim=24, L=150)),
    ("f32 N=1 noncontig var3", case(N=1, B="var3", C="var3", noncontig=True)),
    ("cplx f32", case(complex=True)),
    ("cplx f32 complex tensors", case(complex=True, B_complex_tensor=True, C_complex_tensor=True)),
    ("cplx bf16 constant", case(complex=True, dtype=torch.bfloat16, B="constant", C="constant")),
    ("f32 L=1", case(L=1)),
    ("f32 L=1000 chunk 256", case(L=1000, chunk_len=256, dim=8)),
]


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    if a.is_complex() or b.is_complex():
        a, b = torch.view_as_real(a.to(torch.complex128)), torch.view_as_real(b.to(torch.complex128))
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item(), bool(torch.isnan(a).any())


def check(backend, config=None):
    bad = 0
    for name, c in CASES:
        x = make_inputs(c, "cuda", 5)
        kw = dict(delta_softplus=c["delta_softplus"], return_last_state=True)
        leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in x]
        rl = [t.detach().clone().requires_grad_(True) if t is not None else None for t in x]
        try:
            cfg = dict(config or {}, chunk_len=c["chunk_len"])
            out, last = ssmgen.selective_scan(*leaves, **kw, backend=backend, config=cfg)
            rout, rlast = selective_scan_ref(*rl, **kw)
            dout = torch.randn_like(out)
            want = [i for i, t in enumerate(leaves) if t is not None]
            g = torch.autograd.grad(out, [leaves[i] for i in want], dout)
            rg = torch.autograd.grad(rout, [rl[i] for i in want], dout.double())
            errs = {"out": rel(out, rout), "last": rel(last, rlast)}
            errs.update({"d" + NAMES[i]: rel(a, b) for i, a, b in zip(want, g, rg)})
        except Exception as e:  # report and go on
            print(f"[{backend}] {name}: EXCEPTION {type(e).__name__}: {str(e)[:2000]}", flush=True)
            bad += 1
            continue
        tol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}[c["dtype"]]
        worst = {k: v for k, v in errs.items() if v[0] > tol or v[1]}
        bad += bool(worst)
        print(f"[{backend}] {name}: {'FAIL ' + str(worst) if worst else 'ok'} "
              f"max={max(v[0] for v in errs.values()):.2e}", flush=True)
    return bad


def timing(backends, shapes):
    from triton.testing import do_bench

    from ssmgen.suite import make_inputs as suite_inputs, scan_shapes
    try:
        import selective_scan_cuda as peer
    except ImportError:
        peer = None
    rows = []
    for s in scan_shapes():
        if shapes and s["name"] not in shapes:
            continue
        x = suite_inputs(s)
        dout = torch.randn_like(x[0])
        row = {"name": s["name"]}
        for be in backends:
            try:
                with torch.no_grad():
                    row[f"{be}_fwd"] = do_bench(lambda: ssmgen.selective_scan(
                        *x, delta_softplus=True, backend=be), warmup=10, rep=100,
                        return_mode="median")
                leaves = [t.detach().requires_grad_(True) for t in x]

                def fb():
                    torch.autograd.backward(ssmgen.selective_scan(
                        *leaves, delta_softplus=True, backend=be), dout)
                row[f"{be}_fwdbwd"] = do_bench(fb, warmup=10, rep=100, return_mode="median")
                # the kernel alone (no Python call path), same config as the call above
                from ssmgen import autotune
                from ssmgen import backends as registry
                from ssmgen.inputs import normalize
                call = normalize(*x, delta_softplus=True)
                mod = registry.get(be)
                chunk, cfg, how = autotune.choose(call, be)
                call = call.with_chunk_len(chunk)
                row[f"{be}_cfg"] = f"{how} c{chunk} {cfg.fwd.label()} / {cfg.bwd.label()}"
                row[f"{be}_fwd_kernel"] = do_bench(lambda: mod.forward(call, cfg, False),
                                                   warmup=10, rep=100, return_mode="median")
                _, _, ck = mod.forward(call, cfg, True)
                row[f"{be}_bwd_kernel"] = do_bench(lambda: mod.backward(call, cfg, ck, dout),
                                                   warmup=10, rep=100, return_mode="median")
            except Exception as e:
                row[f"{be}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        if peer is not None:
            row["peer_fwd"] = do_bench(lambda: peer.fwd(*x, True), warmup=10, rep=100,
                                       return_mode="median")

            def pfb():
                o, xs, _ = peer.fwd(*x, True)
                peer.bwd(*x, dout, xs, o, None, True, False)
            row["peer_fwdbwd"] = do_bench(pfb, warmup=10, rep=100, return_mode="median")
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in row.items()}), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="cuda,triton")
    ap.add_argument("--check", default="cuda")
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t = time.time()
    bad = sum(check(be) for be in a.check.split(",") if be)
    print(f"check: {bad} failing cases ({time.time() - t:.0f} s)", flush=True)
    if not a.no_time:
        rows = timing(a.backends.split(","), [s for s in a.shapes.split(",") if s])
        if a.out:
            with open(a.out, "w") as f:
                json.dump(rows, f, indent=1)
