"""Command line: `ssmgen demo | render | aot` (also `python -m ssmgen ...`).

demo, on a machine without a GPU: renders a few variants, compiles them to PTX/cubin for sm_90
and reports registers and spills, then runs them through Triton's interpreter and checks output
and every gradient against the float64 reference. On a GPU it checks on CUDA tensors and times
forward and forward+backward against the reference.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

DEMO_SPECS = [  # (d_state, dtype, complex_A, B_layout, C_layout)
    (16, "float32", False, "variable", "variable"),
    (5, "bfloat16", False, "constant", "variable"),
    (4, "float32", True, "variable", "constant"),
]


def _specs():
    from ssmgen import ScanSpec

    return [ScanSpec(d_state=n, dtype=dt, complex_A=c, B_layout=b, C_layout=cl, has_D=True,
                     has_z=True, has_delta_bias=True, delta_softplus=True,
                     return_last_state=True, chunk_len=16)
            for n, dt, c, b, cl in DEMO_SPECS]


def _inputs(spec, batch, dim, L, device, seed=0):
    from ssmgen import suite

    shape = {"batch": batch, "dim": dim, "seqlen": L, "d_state": spec.d_state, "groups": 1,
             "dtype": spec.dtype, "A": "complex" if spec.complex_A else "real",
             "B_layout": spec.B_layout, "C_layout": spec.C_layout}
    return suite.make_inputs(shape, device=device, seed=seed)


def check(spec, device, batch=2, dim=8, L=40):
    """Output, last state and every gradient vs the float64 reference; returns max rel error."""
    import torch

    import ssmgen
    from ssmgen.reference import selective_scan_ref

    x = _inputs(spec, batch, dim, L, device)
    leaves = [t.clone().requires_grad_(True) for t in x]
    refl = [t.clone().requires_grad_(True) for t in x]
    cfg = {"chunk_len": spec.chunk_len, "block_l": 8, "block_d": 4}
    out, last = ssmgen.selective_scan(*leaves, delta_softplus=True, return_last_state=True,
                                      backend="triton", config=cfg)
    rout, rlast = selective_scan_ref(*refl, delta_softplus=True, return_last_state=True)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    rgrads = torch.autograd.grad(rout, refl, dout.double())

    def rel(a, b):
        a = a.detach().to(b.dtype)
        return ((a - b).abs().norm() / b.abs().norm()).item()

    errs = {"out": rel(out, rout), "last": rel(last, rlast.detach())}
    names = ["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"]
    errs.update({n: rel(g, r) for n, g, r in zip(names, grads, rgrads)})
    return errs


def demo(args):
    import torch

    gpu = torch.cuda.is_available()
    specs = _specs()
    from ssmgen.backends.triton_backend import default_config, kernel_name, render_source

    print(f"ssmgen demo on {'GPU ' + torch.cuda.get_device_name() if gpu else 'CPU (no GPU)'}")
    print("\n1. render: templates/triton/*.jinja -> one module per (spec, config)")
    for s in specs:
        cfg = default_config(s)
        for kind in ("fwd", "bwd"):
            src = render_source(s, getattr(cfg, kind), kind)
            print(f"   {kernel_name(s, getattr(cfg, kind), kind)}: {src.count(chr(10))} lines")
    print("\n2. compile for sm_90 without a GPU (Triton -> PTX -> cubin), registers and spills")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("from ssmgen.cli import _specs; from ssmgen.aot import compile_all, format_table; "
            "r, e = compile_all(_specs(), archs=(90,)); print(format_table(r)); "
            "[print('FAILED', n, m) for n, m in e]; raise SystemExit(1 if e else 0)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True)
    print("\n".join("   " + ln for ln in proc.stdout.splitlines()))
    if proc.returncode:
        print(proc.stderr[-2000:])
        return 1
    if _cuda_step():
        return 1
    where = "CUDA tensors" if gpu else "Triton's CPU interpreter"
    print(f"\n3. output, last state and every gradient vs the float64 reference ({where})")
    if not gpu:
        env = dict(os.environ, TRITON_INTERPRET="1")
        proc = subprocess.run([sys.executable, "-m", "ssmgen", "_check"], env=env, text=True)
        if proc.returncode:
            return proc.returncode
    else:
        if _check_all("cuda"):
            return 1
        _bench()
    print("\ndone.")
    return 0


def _cuda_step() -> int:
    """The CUDA backend's templates rendered and compiled for sm_90 (nvcc's resource report)."""
    from ssmgen.backends import cuda_backend as cb
    from ssmgen.backends import cuda_runtime as cr

    print("\n2b. CUDA backend: templates/cuda/*.jinja -> CUDA C++, compiled for sm_90 "
          "(registers, spills)")
    if cr.nvcc_path() is None:
        print("   skipped: no nvcc on this machine (the CUDA backend compiles with NVRTC on GPUs)")
        return 0
    for s in _specs():
        s = s.replace(chunk_len=cb.default_chunk_len(s))
        cfg = cb.default_config(s)
        for kind in ("fwd", "bwd"):
            k = getattr(cfg, kind)
            t0 = time.perf_counter()
            try:
                use = cr.resource_usage(cb.kernel_name(s, k, kind), cb.render_source(s, k, kind), 90)
            except cr.CudaCompileError as e:
                print(f"   FAILED {cb.kernel_name(s, k, kind)}:\n{e}")
                return 1
            print(f"   {cb.kernel_name(s, k, kind)}: {use['registers']} regs, spills "
                  f"{use['spill_stores']}/{use['spill_loads']} B, "
                  f"{time.perf_counter() - t0:.1f} s")
    return 0


def _check_all(device) -> int:
    import torch

    from ssmgen.numerics import TOL
    failed = 0
    for s in _specs():
        t0 = time.perf_counter()
        errs = check(s, device)
        worst = max(errs.values())
        ok = worst <= TOL[getattr(torch, s.dtype)][0]  # the tests' relative-norm bound
        failed += not ok
        print(f"   {s.short_name():<40} worst rel err {worst:.1e} "
              f"({max(errs, key=errs.get)}) {'ok' if ok else 'FAIL'}  "
              f"[{time.perf_counter() - t0:.1f} s]")
    return failed


def _bench():
    import torch
    from triton.testing import do_bench

    import ssmgen
    from ssmgen import ScanSpec

    s = ScanSpec(d_state=16, dtype="bfloat16", has_D=True, has_z=True, has_delta_bias=True,
                 delta_softplus=True)
    x = _inputs(s, 8, 1536, 2048, "cuda")
    print("\n4. forward time, batch 8, dim 1536, L 2048, d_state 16, bf16 (median, CUDA events)")
    with torch.no_grad():
        t = do_bench(lambda: ssmgen.selective_scan(*x, delta_softplus=True), return_mode="median")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ssmgen.selective_scan(*x, delta_softplus=True, backend="reference")
        torch.cuda.synchronize()
        tr = (time.perf_counter() - t0) * 1e3
    print(f"   ssmgen triton: {t:.3f} ms   float64 PyTorch reference: {tr:.1f} ms")


def _progress(done, total, text):
    width = 30
    fill = int(width * done / max(total, 1))
    sys.stderr.write(f"\r   [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {text:<48}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def tune_cmd(a) -> int:
    import torch

    from ssmgen import autotune, backends, bench, suite

    if not torch.cuda.is_available():
        print("ssmgen tune measures kernels on a CUDA GPU; none is visible here", file=sys.stderr)
        return 2
    shapes = suite.scan_shapes(a.suite)
    steps = suite.load(a.suite).get("step", [])
    if a.shapes:
        want = set(a.shapes.split(","))
        unknown = want - {s["name"] for s in shapes + steps}
        if unknown:
            print(f"unknown shapes {sorted(unknown)}", file=sys.stderr)
            return 2
        shapes = [s for s in shapes if s["name"] in want]
        steps = [s for s in steps if s["name"] in want]
    t0 = time.perf_counter()
    rows = []
    for i, s in enumerate(shapes):
        left = None if a.budget_s is None else max(1.0, a.budget_s - (time.perf_counter() - t0))
        per_shape = None if left is None else left / (len(shapes) - i)
        print(f"{s['name']}: tuning ({per_shape and f'{per_shape:.0f} s budget' or 'no budget'})")
        for backend in a.backends.split(","):
            x = suite.make_inputs(s)
            # the newest record of this shape: kept (--keep-*), or its configs join the candidates
            keep = autotune.earlier_record(backend, x)
            if (a.keep_fwd or a.keep_bwd) and keep is None:
                print(f"  {backend}: no earlier record of this shape, tuning both kinds")
            rec = autotune.tune(x, True, backend, max_fwd=a.max_fwd, max_bwd=a.max_bwd,
                                budget_s=per_shape, progress=_progress,
                                keep_fwd=keep if a.keep_fwd else None,
                                keep_bwd=keep if a.keep_bwd else None, earlier=keep)
            rows.append((s["name"], backend, rec))
    step_rows = []
    for s in steps:  # the decode step: seconds, not budgeted
        for backend in a.backends.split(","):
            rec = autotune.tune_step(bench.step_inputs(s) + [True, None], backend)
            step_rows.append((s["name"], backend, rec))
    print(f"\ntuned {len(rows)} shapes in {time.perf_counter() - t0:.0f} s "
          f"(records in {__import__('ssmgen.tunecache').tunecache.user_file()})")
    print("| shape | backend | chunk | fwd config | fwd ms (default) | bwd config | bwd ms (default) "
          "| fwd+bwd speedup vs default |")
    print("|---|---|---|---|---|---|---|---|")
    for name, backend, r in rows:
        c, d = r["config"], r["default"]
        kcls = backends.get(backend).ScanConfig.KERNEL
        tag = lambda k: kcls(**k).label()  # noqa: E731
        # a kind kept from an earlier record (--keep-*) has no default timing
        ms = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        both = d["fwd_ms"] is not None and d["bwd_ms"] is not None
        speedup = f"{(d['fwd_ms'] + d['bwd_ms']) / (r['fwd_ms'] + r['bwd_ms']):.2f}x" if both else "-"
        print(f"| {name} | {backend} | {c['chunk_len']} | {tag(c['fwd'])} | {r['fwd_ms']:.3f} "
              f"({ms(d['fwd_ms'])}) | {tag(c['bwd'])} | {r['bwd_ms']:.3f} "
              f"({ms(d['bwd_ms'])}) | {speedup} |")
    if step_rows:
        print("\n| decode step | backend | config | us (default) |\n|---|---|---|---|")
    for name, backend, r in step_rows:
        d = r["default"]["step_ms"]
        print(f"| {name} | {backend} | {r['config']['step']} | {r['step_ms'] * 1e3:.2f} "
              f"({d * 1e3 if d else float('nan'):.2f}) |")
    return 0


def build_ext_cmd(a) -> int:
    """Renders each listed variant (forward and backward) and compiles it for every arch into a
    cubin pack; the CUDA backend loads from the pack before it would compile anything."""
    import json
    from pathlib import Path

    from ssmgen import ScanSpec
    from ssmgen.backends import cuda_backend as cb
    from ssmgen.backends import cuda_runtime

    entries = json.loads(Path(a.specs).read_text())
    if not isinstance(entries, list):
        raise SystemExit(f"--specs {a.specs}: expected a JSON list of spec objects")
    kernels = []
    for e in entries:
        e = dict(e)
        cfg = e.pop("config", None)
        s = ScanSpec(**e)
        if "chunk_len" not in e:
            s = s.replace(chunk_len=cb.default_chunk_len(s))
        sc = cb.ScanConfig.from_dict(cfg) if cfg else cb.default_config(s)
        for main in ("fwd", "bwd"):
            k = getattr(sc, main)
            k.check(s, main)
            kernels += [(cb.kernel_name(s, k, kind, v), cb.render_source(s, k, kind, v))
                        for kind in cb.kinds_of(k, main) for v in cb.variants(s, k, kind)]
    archs = [int(x) for x in a.arch.split(",")]
    t0 = time.perf_counter()
    paths = cuda_runtime.build_pack(kernels, archs, Path(a.out))
    print(f"{len(paths)} cubins ({len(kernels)} kernels x sm_{', sm_'.join(map(str, archs))}) in "
          f"{a.out} ({time.perf_counter() - t0:.1f} s, {cuda_runtime.compiler()}); use with "
          f"SSMGEN_CUDA_PACK={Path(a.out).resolve()}")
    return 0


def cache_cmd(a) -> int:
    import json as _json

    from ssmgen import tunecache

    if a.action == "ls":
        for r in tunecache.all_records():
            b = r["bucket"]
            print(f"{r['device']['name']:<28} {r['backend']:<7} {r['spec_key']:<56} "
                  f"L<={b['seqlen']:<6} rows<={b['rows']:<7} {r['config']}")
        return 0
    if a.action == "show":
        hits = [r for r in tunecache.all_records() if a.arg and a.arg in r["spec_key"]]
        print(_json.dumps(hits, indent=1))
        return 0 if hits else 1
    if a.action == "export":
        ok = tunecache.write_records(tunecache.read_file(tunecache.user_file()), a.arg,
                                     replace_all=True)
        return 0 if ok else 1
    if a.action in ("import", "merge"):
        recs = []
        for f in a.files:
            recs = tunecache.merge(recs, tunecache.read_file(f))
        return 0 if tunecache.write_records(recs) else 1
    if a.action == "clear":
        f = tunecache.user_file()
        if f.exists():
            f.unlink()
        print(f"cleared {f}")
        return 0
    return 2


def main(argv=None):
    p = argparse.ArgumentParser(prog="ssmgen")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("demo", help="render, compile, check against the reference (and time on a GPU)")
    r = sub.add_parser("render", help="print the rendered Triton source of a variant")
    r.add_argument("spec_json", help='e.g. \'{"d_state": 16, "dtype": "bfloat16"}\'')
    r.add_argument("--kind", choices=["fwd", "bwd"], default="fwd")
    r.add_argument("--backend", choices=["triton", "cuda"], default="triton")
    x = sub.add_parser("build-ext", help="compile CUDA-backend variants ahead of time into a "
                       "cubin pack (no NVRTC at run time: set SSMGEN_CUDA_PACK=DIR)")
    x.add_argument("--specs", required=True,
                   help="JSON file: a list of spec dicts, each optionally with \"config\" "
                        "({\"fwd\": {...}, \"bwd\": {...}}); chunk_len defaults as at run time")
    x.add_argument("--arch", default="80,90", help="comma-separated compute capabilities")
    x.add_argument("--out", default="ssmgen_cuda_pack")
    sub.add_parser("aot", help="compile every template variant for sm_80/sm_90, print resources")
    sub.add_parser("_check", help=argparse.SUPPRESS)
    t = sub.add_parser("tune", help="tune the suite's scan and decode-step shapes on this GPU "
                                    "into the user cache")
    t.add_argument("--suite", default=None, help="suite file (default: the one ssmgen ships)")
    t.add_argument("--shapes", default=None, help="comma-separated shape names (default: all)")
    t.add_argument("--backends", default="triton")
    t.add_argument("--budget-s", type=float, default=None, help="time budget for the whole run")
    t.add_argument("--max-fwd", type=int, default=12, help="forward candidates per shape")
    t.add_argument("--max-bwd", type=int, default=16, help="backward candidates per shape")
    keep = t.add_mutually_exclusive_group()
    keep.add_argument("--keep-fwd", action="store_true",
                      help="time only the forward config of each shape's newest record (any "
                      "template version) and give the budget to the backward: after a "
                      "backward-only template change")
    keep.add_argument("--keep-bwd", action="store_true",
                      help="the same for the backward (its chunk_len and config): after a "
                      "forward-only template change")
    b = sub.add_parser("bench", help="suite shapes vs importable peers and the measured floor")
    b.add_argument("--suite", default=None)
    b.add_argument("--shapes", default=None)
    b.add_argument("--out", default="benchmarks/results")
    b.add_argument("--backends", default="triton,cuda", help="ssmgen backends to time")
    c = sub.add_parser("cache", help="ls | show KEY | export FILE | import FILE.. | merge FILE.. "
                                     "| clear")
    c.add_argument("action", choices=["ls", "show", "export", "import", "merge", "clear"])
    c.add_argument("files", nargs="*", help="KEY for show, FILE for export, FILEs for "
                                             "import/merge")
    a = p.parse_args(argv)
    if a.cmd == "demo":
        return demo(a)
    if a.cmd == "tune":
        return tune_cmd(a)
    if a.cmd == "bench":
        from ssmgen import bench

        return bench.main(a.suite, a.out, a.shapes, tuple(a.backends.split(",")))
    if a.cmd == "cache":
        a.arg = a.files[0] if a.files else None
        if a.action in ("show", "export", "import", "merge") and not a.files:
            p.error(f"cache {a.action} needs an argument")
        return cache_cmd(a)
    if a.cmd == "_check":
        return 1 if _check_all("cpu") else 0
    if a.cmd == "render":
        from ssmgen import ScanSpec, backends

        mod = backends.get(a.backend)
        s = ScanSpec.from_json(a.spec_json)
        print(mod.render_source(s, getattr(mod.default_config(s), a.kind), a.kind))
        return 0
    if a.cmd == "build-ext":
        return build_ext_cmd(a)
    if a.cmd == "aot":
        from ssmgen.aot import main as aot_main

        return aot_main([])
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
