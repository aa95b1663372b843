"""`ssmgen bench`: the suite's shapes forward and forward+backward, ssmgen next to the peers that
are importable in the same process, against the physical floor measured in the same run.

Floor (../shared/bench/ANCHORS.md): each input read once and each output written once, over the
measured device-to-device copy bandwidth; one exp per state element in forward and one more in
backward (complex A: exp, sin and cos), over the measured exp2 rate; the larger of the two.
Writes results.json, results.md and results.png under benchmarks/results/<gpu-name>/.
"""
from __future__ import annotations

import json
import os
import time

import torch

from .spec import DTYPE_BYTES


def floor_ms(s: dict, copy_bw: float, exp_rate: float) -> dict:
    """Byte and exp floors (ms) of a suite shape, forward and forward+backward."""
    b, d, L, N, g = s["batch"], s["dim"], s["seqlen"], s["d_state"], s.get("groups", 1)
    e = DTYPE_BYTES[s["dtype"]]
    cplx = s.get("A", "real") == "complex"
    bc = 2 * b * g * N * L * e * (2 if cplx else 1)  # B and C (complex: re and im)
    act = b * d * L * e  # one (batch, dim, L) tensor
    fwd_bytes = 3 * act + bc + act  # u, delta, z, B, C in; out
    bwd_bytes = fwd_bytes - act + act + 3 * act + bc  # the same inputs + dout; du, ddelta, dz, dB, dC
    sf = b * d * L * N * (3 if cplx else 1)  # special functions per pass
    fb = fwd_bytes + bwd_bytes
    return {"bytes_fwd_ms": fwd_bytes / copy_bw * 1e3, "bytes_fwdbwd_ms": fb / copy_bw * 1e3,
            "exp_fwd_ms": sf / exp_rate * 1e3, "exp_fwdbwd_ms": 2 * sf / exp_rate * 1e3,
            "fwd_ms": max(fwd_bytes / copy_bw, sf / exp_rate) * 1e3,
            "fwdbwd_ms": max(fb / copy_bw, 2 * sf / exp_rate) * 1e3}


def measure_copy_bandwidth() -> float:
    """Bytes read + written per second by a 2 GiB device-to-device copy."""
    from triton.testing import do_bench

    src = torch.empty(2**29, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=20, rep=100, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def measure_exp_rate() -> float:
    """exp2 per second on the special-function units (a register-resident loop, one FMA each)."""
    import triton
    import triton.language as tl
    from triton.testing import do_bench

    @triton.jit
    def _exp_loop(x_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for _ in range(ITERS):
            x = tl.exp2(x) * -0.5  # dependent chain per lane, many lanes in flight
            acc += x
        tl.store(x_ptr + offs, acc)

    n, iters = 2**22, 256
    x = torch.rand(n, device="cuda") * -1
    ms = do_bench(lambda: _exp_loop[(n // 1024,)](x, iters, 1024), warmup=20, rep=100,
                  return_mode="median")
    return n * iters / (ms * 1e-3)


def peak_mb(fn) -> float:
    """MiB allocated by fn() above what was allocated before it, at its peak."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_shape(s: dict, peer, backends=("triton", "cuda"), warmup=10, rep=100) -> dict:
    """Times one suite shape: every ssmgen backend through the public call (its tuned record
    or default config), then the peer, all on the same random inputs."""
    from triton.testing import do_bench

    import ssmgen
    from ssmgen.suite import make_inputs

    x = make_inputs(s)
    dout = torch.randn_like(x[0])
    bench = lambda f: do_bench(f, warmup=warmup, rep=rep, return_mode="median")  # noqa: E731
    row = {"name": s["name"]}
    outs = {}
    for be in backends:
        try:
            with torch.no_grad():
                outs[be] = ssmgen.selective_scan(*x, delta_softplus=True, backend=be)
                row[f"{be}_fwd_ms"] = bench(lambda: ssmgen.selective_scan(
                    *x, delta_softplus=True, backend=be))
            leaves = [t.detach().requires_grad_(True) for t in x]

            def fb():
                torch.autograd.backward(ssmgen.selective_scan(*leaves, delta_softplus=True,
                                                              backend=be), dout)

            fb()
            row[f"{be}_fwdbwd_ms"] = bench(fb)
            row[f"{be}_peak_mb"] = peak_mb(fb)
        except Exception as e:  # reported in the row; the other implementations still run
            row[f"{be}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    if peer is not None:
        pout = peer.fwd(*x, True)[2]  # out with the z gate
        for be, out in outs.items():
            row[f"{be}_out_rel_diff_vs_peer"] = ((out.float() - pout.float()).norm()
                                                 / pout.float().norm()).item()
        row["peer_fwd_ms"] = bench(lambda: peer.fwd(*x, True))

        def pfb():
            o, xs, _ = peer.fwd(*x, True)
            peer.bwd(*x, dout, xs, o, None, True, False)

        row["peer_fwdbwd_ms"] = bench(pfb)
        row["peer_peak_mb"] = peak_mb(pfb)
    return row


def _peer():
    try:
        import selective_scan_cuda

        return selective_scan_cuda
    except ImportError:
        return None


def peer_import(module: str):
    """A module of mamba-ssm (e.g. "mamba_ssm.modules.mamba_simple"): from an installed
    mamba_ssm, else from the sdist tree named by SSMGEN_PEER_SRC, whose package __init__ (it
    imports every extension and transformers) is bypassed; its Triton files need no build, its
    CUDA scan is the selective_scan_cuda that benchmarks/build_peer.py builds. None if neither
    imports."""
    import importlib
    import sys
    import types

    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    src = os.environ.get("SSMGEN_PEER_SRC")
    if not src:
        return None
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        del sys.modules[name]
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = [os.path.join(src, "mamba_ssm")]
    sys.modules["mamba_ssm"] = pkg
    try:
        return importlib.import_module(module)
    except ImportError as e:
        print(f"peer: {module} not importable from {src}: {e}", file=sys.stderr)
        return None


def _peer_step():
    """mamba-ssm's Triton selective_state_update (installed, or from its sdist tree)."""
    mod = peer_import("mamba_ssm.ops.triton.selective_state_update")
    return None if mod is None else mod.selective_state_update


def step_floor_ms(s: dict, copy_bw: float) -> float:
    """Bytes of one decode step over the copy bandwidth: the fp32 state read and written;
    x, dt, z read and out written; B, C, A, D, dt_bias read."""
    b, d, N, e = s["batch"], s["dim"], s["d_state"], DTYPE_BYTES[s["dtype"]]
    byts = 2 * b * d * N * 4 + 4 * b * d * e + 2 * b * N * e + d * N * 4 + 2 * d * 4
    return byts / copy_bw * 1e3


def step_inputs(s: dict, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    b, d, N = s["batch"], s["dim"], s["d_state"]
    dt_ = getattr(torch, s["dtype"])

    def rn(*shape, dtype=dt_):
        return torch.randn(*shape, generator=g, device="cuda").to(dtype)

    state = rn(b, d, N, dtype=torch.float32)
    x, z = rn(b, d), rn(b, d)
    dt = (0.5 * torch.rand(b, d, generator=g, device="cuda")).to(dt_)
    A = -0.5 * torch.rand(d, N, generator=g, device="cuda")
    return [state, x, dt, A, rn(b, N), rn(b, N), rn(d, dtype=torch.float32), z,
            0.1 * torch.rand(d, generator=g, device="cuda")]


def _time_eager(fn, calls=200, reps=7) -> float:
    """ms per call of `calls` back-to-back calls from Python (what an eager loop pays)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) * 1e3 / calls)
    return sorted(ts)[len(ts) // 2]


def _time_graph(fn, steps=10, replays=50, reps=7) -> float:
    """ms per step of a CUDA graph of `steps` steps, replayed."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(replays):
            graph.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / (replays * steps))
    return sorted(ts)[len(ts) // 2]


def run_step(s: dict, peer_step, backends=("triton", "cuda"), copy_bw=None) -> dict:
    """One decode-step shape: each ssmgen backend and mamba-ssm's Triton step, eager from
    Python and replayed in a CUDA graph; outputs compared with the first implementation."""
    import ssmgen
    from .backends import fastcall

    fastcall.module()  # built before timing: step plans would use it once its thread is done
    x = step_inputs(s)
    row = {"name": s["name"], "kind": "step"}
    fns = {be: (lambda be=be, st=x[0].clone(): ssmgen.selective_state_update(
        st, *x[1:], dt_softplus=True, backend=be)) for be in backends}
    if peer_step is not None:
        st = x[0].clone()
        fns["peer"] = lambda: peer_step(st, *x[1:4], *x[4:6], D=x[6], z=x[7], dt_bias=x[8],
                                        dt_softplus=True)
    outs = {}
    for name, fn in fns.items():
        outs[name] = fn().float()
        row[f"{name}_eager_ms"] = _time_eager(fn)
        row[f"{name}_graph_ms"] = _time_graph(fn)
    first = next(iter(outs.values()))
    for name, o in outs.items():
        row[f"{name}_maxdiff"] = (o - first).abs().max().item()
    if copy_bw:
        row["floor_ms"] = step_floor_ms(s, copy_bw)
    return row


def step_table(rows) -> str:
    lines = ["", "## Decode step (ms per step)", "",
             "| shape | impl | eager (Python loop) | CUDA graph | floor | floor/graph |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for im in [k[:-9] for k in r if k.endswith("_eager_ms")]:
            g = r[f"{im}_graph_ms"]
            lines.append(f"| {r['name']} | {'mamba-ssm triton' if im == 'peer' else im} | "
                         f"{r[f'{im}_eager_ms']:.4f} | {g:.4f} | {r.get('floor_ms', 0):.4f} | "
                         f"{r.get('floor_ms', 0) / g:.2f} |")
    return "\n".join(lines)


def main(suite_path=None, out_root="benchmarks/results", shapes=None,
         backends=("triton", "cuda")) -> int:
    from ssmgen import suite
    from ssmgen import __version__
    from ssmgen import device as dev

    if not torch.cuda.is_available():
        print("ssmgen bench needs a CUDA GPU")
        return 2
    sh = suite.scan_shapes(suite_path)
    if shapes:
        sh = [s for s in sh if s["name"] in shapes.split(",")]
    copy_bw, exp_rate = measure_copy_bandwidth(), measure_exp_rate()
    peer = _peer()
    rows = []
    for s in sh:
        r = run_shape(s, peer, backends)
        r["floor"] = floor_ms(s, copy_bw, exp_rate)
        rows.append(r)
        print(json.dumps(r), flush=True)
    step_rows = []
    peer_step = _peer_step()
    for s in suite.load(suite_path).get("step", []):
        if shapes and s["name"] not in shapes.split(","):
            continue
        step_rows.append(run_step(s, peer_step, backends, copy_bw))
        print(json.dumps(step_rows[-1]), flush=True)
    info = dev.info()
    meta = {"device": info, "ssmgen": __version__, "torch": torch.__version__,
            "copy_TBps": copy_bw / 1e12, "exp2_Tps": exp_rate / 1e12,
            "peer": "mamba-ssm selective_scan_cuda" if peer else None,
            "date": time.strftime("%Y-%m-%d")}
    out = os.path.join(out_root, info["name"].replace(" ", "_"))
    os.makedirs(out, exist_ok=True)
    meta["peer_step"] = "mamba-ssm Triton selective_state_update" if peer_step else None
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "step_rows": step_rows}, f, indent=1)
    text = report(meta, rows, step_rows, out)
    print(text)
    return 0


def report(meta, rows, step_rows, out) -> str:
    """results.md (the scan table, then the step table) and, where scan shapes ran,
    results.png under `out`; returns the markdown. A run of step shapes alone has no plot."""
    text = table(meta, rows) + (step_table(step_rows) if step_rows else "")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    if rows:
        plot(rows, os.path.join(out, "results.png"))
    return text


def impls(rows) -> list:
    """Implementations present in the rows, ssmgen backends first, the peer last."""
    names = []
    for r in rows:
        for k in r:
            if k.endswith("_fwd_ms") and k[:-7] not in names:
                names.append(k[:-7])
    return sorted(names, key=lambda n: (n == "peer", n))


def table(meta, rows) -> str:
    lines = [f"# {meta['device']['name']}: copy {meta['copy_TBps']:.2f} TB/s, exp2 "
             f"{meta['exp2_Tps']:.2f} T/s (measured in this run), {meta['date']}", "",
             "| shape | impl | fwd ms | floor fwd | peer/impl | floor/impl | f+b ms | floor f+b "
             "| peer/impl | floor/impl | peak MB |",
             "|---" * 11 + "|"]
    n = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    q = lambda a, b: "-" if a is None or b is None else f"{a / b:.2f}"  # noqa: E731
    for r in rows:
        f = r["floor"]
        for im in impls(rows):
            fw, fb = r.get(f"{im}_fwd_ms"), r.get(f"{im}_fwdbwd_ms")
            if fw is None:
                continue
            peak = r.get(f"{im}_peak_mb")
            lines.append(
                f"| {r['name']} | {im} | {fw:.3f} | {f['fwd_ms']:.3f} | "
                f"{q(r.get('peer_fwd_ms'), fw)} | {f['fwd_ms'] / fw:.2f} | {n(fb)} | "
                f"{f['fwdbwd_ms']:.3f} | {q(r.get('peer_fwdbwd_ms'), fb)} | "
                f"{q(f['fwdbwd_ms'], fb)} | {'-' if peak is None else f'{peak:.0f}'} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, kind in zip(axes, ("fwd", "fwdbwd")):
        xs = range(len(rows))
        names = impls(rows)
        w = 0.8 / len(names)
        for j, im in enumerate(names):
            ax.bar([i - 0.4 + w * (j + 0.5) for i in xs],
                   [r.get(f"{im}_{kind}_ms") or 0 for r in rows], w,
                   label="mamba-ssm" if im == "peer" else f"ssmgen {im}")
        ax.scatter(list(xs), [r["floor"][f"{kind}_ms"] for r in rows], color="k", marker="_",
                   s=400, label="floor", zorder=3)
        ax.set_xticks(list(xs), [r["name"] for r in rows], rotation=30, ha="right")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.set_title("forward" if kind == "fwd" else "forward + backward")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
