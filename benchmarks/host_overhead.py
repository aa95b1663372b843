"""Host time of ssmgen's public calls next to mamba-ssm's (GPU).

At shapes whose kernels run for a few microseconds, a loop of back-to-back eager calls is
bound by the Python each call runs, so its time per call is the host overhead. Measured, each
in the same process: selective_scan forward and forward+backward (tiny shape), the decode step
(tiny and step_b64_d4096_n16), with call plans on and off (SSMGEN_PLANS), the step's C++
launch on and off (SSMGEN_FASTCALL) and, for the CUDA
backend, launches through the driver and through CuPy (SSMGEN_CUDA_LAUNCH); mamba-ssm's
selective_scan_fn and Triton selective_state_update where importable (SSMGEN_PEER_SRC and a
built selective_scan_cuda). Then the m1_130m suite shape's forward through the public call
timed as `ssmgen bench` times it (do_bench: L2 flushed, CUDA events per call), plans on / off.

Usage: python benchmarks/host_overhead.py OUT.json
"""
import json
import os
import sys

import torch

import ssmgen
from ssmgen import bench, ops, step, suite
from ssmgen.backends import cuda_runtime, fastcall


def scan_inputs(b, d, L, N, dtype, grad):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    x = [r(b, d, L).to(dtype), (0.5 * torch.rand(b, d, L, generator=g, device="cuda")).to(dtype),
         -0.5 * torch.rand(d, N, generator=g, device="cuda"), r(b, N, L).to(dtype),
         r(b, N, L).to(dtype), r(d), r(b, d, L).to(dtype),
         0.1 * torch.rand(d, generator=g, device="cuda")]
    return [t.requires_grad_(grad) for t in x]


def modes(backend):
    yield "plans", {"SSMGEN_PLANS": "1"}
    # the C++ launch (backends/fastcall.py) of steps and inference scans off: Python plans only
    yield "plans_no_fastcall", {"SSMGEN_PLANS": "1", "SSMGEN_FASTCALL": "0"}
    yield "no_plans", {"SSMGEN_PLANS": "0"}
    if backend == "cuda":
        yield "plans_cupy_launch", {"SSMGEN_PLANS": "1", "SSMGEN_CUDA_LAUNCH": "cupy"}


def with_env(env, fn):
    """fn() under env; plans (and their C++ launches) are dropped before and after, so each
    mode makes its own."""
    names = ("SSMGEN_PLANS", "SSMGEN_CUDA_LAUNCH", "SSMGEN_FASTCALL")
    old = {k: os.environ.get(k) for k in names}
    for k in names:
        os.environ.pop(k, None)
    os.environ.update(env)
    cuda_runtime._cu_launch.cache_clear()
    ops._plans.clear()
    step._plans.clear()
    try:
        return fn()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cuda_runtime._cu_launch.cache_clear()
        ops._plans.clear()
        step._plans.clear()


def us(fn, calls=300):
    return round(bench._time_eager(fn, calls=calls) * 1e3, 2)


def main(out_path):
    res = {"device": torch.cuda.get_device_name(), "rows": []}
    rows = res["rows"]

    def add(what, impl, mode, value, unit="us/call"):
        rows.append(dict(what=what, impl=impl, mode=mode, value=value, unit=unit))
        print(json.dumps(rows[-1]), flush=True)

    def measure(fn):  # a failing implementation is reported, the others still run
        try:
            return fn()
        except Exception as e:
            return f"{type(e).__name__}: {str(e)[:200]}"

    fastcall.module()  # built before timing (plans use it once its thread is done)
    # a short prefill of a Mamba-130m-sized layer (batch x dim > FEW_ROWS: the CUDA backend by
    # default, one chunk: no splits), the backend ssmgen picks, no gradients
    xp = scan_inputs(4, 1536, 128, 16, torch.bfloat16, grad=False)
    for mode, env in modes("cuda"):
        f = lambda: ssmgen.selective_scan(*xp, delta_softplus=True)  # noqa: E731
        add("prefill_b4_d1536_L128_bf16", "auto (cuda)", mode,
            measure(lambda: with_env(env, lambda: us(f))))
    ssi0 = bench.peer_import("mamba_ssm.ops.selective_scan_interface")
    if ssi0 is not None:
        f = lambda: ssi0.selective_scan_fn(*xp, delta_softplus=True)  # noqa: E731
        add("prefill_b4_d1536_L128_bf16", "mamba-ssm selective_scan_fn", "-",
            measure(lambda: us(f)))
    tiny = (1, 64, 64, 16)
    xf = scan_inputs(*tiny, torch.float32, grad=False)
    xg = scan_inputs(*tiny, torch.float32, grad=True)
    dout = torch.randn_like(xf[0])
    for be in ("cuda", "triton"):
        for mode, env in modes(be):
            f = lambda: ssmgen.selective_scan(*xf, delta_softplus=True, backend=be)  # noqa
            add("scan_fwd_b1_d64_L64", be, mode, measure(lambda: with_env(env, lambda: us(f))))
            fb = lambda: torch.autograd.backward(  # noqa: E731
                ssmgen.selective_scan(*xg, delta_softplus=True, backend=be), dout)
            add("scan_fwdbwd_b1_d64_L64", be, mode,
                measure(lambda: with_env(env, lambda: us(fb, 100))))
    ssi = bench.peer_import("mamba_ssm.ops.selective_scan_interface")
    if ssi is not None:
        f = lambda: ssi.selective_scan_fn(*xf, delta_softplus=True)  # noqa: E731
        add("scan_fwd_b1_d64_L64", "mamba-ssm selective_scan_fn", "-", measure(lambda: us(f)))
        fb = lambda: torch.autograd.backward(ssi.selective_scan_fn(*xg, delta_softplus=True), dout)  # noqa
        add("scan_fwdbwd_b1_d64_L64", "mamba-ssm selective_scan_fn", "-",
            measure(lambda: us(fb, 100)))
        peer = bench._peer()
        if peer is not None:
            f = lambda: peer.fwd(*xf, True)  # noqa: E731
            add("scan_fwd_b1_d64_L64", "mamba-ssm selective_scan_cuda.fwd (no Python)", "-",
                measure(lambda: us(f)))

    peer_step = bench._peer_step()
    for name, s in (("step_b1_d64_n16", dict(batch=1, dim=64, d_state=16, dtype="bfloat16")),
                    ("step_b64_d4096_n16", dict(batch=64, dim=4096, d_state=16,
                                                dtype="bfloat16"))):
        a = bench.step_inputs(s)
        kw = dict(z=a[7], dt_bias=a[8], dt_softplus=True)
        for be in ("triton", "cuda"):
            for mode, env in modes(be):
                f = lambda: ssmgen.selective_state_update(*a[:7], **kw, backend=be)  # noqa
                add(name, be, mode, measure(lambda: with_env(env, lambda: us(f, 500))))
        if peer_step is not None:
            f = lambda: peer_step(*a[:7], **kw)  # noqa: E731
            add(name, "mamba-ssm selective_state_update", "-", measure(lambda: us(f, 500)))

    from triton.testing import do_bench

    s = next(x for x in suite.scan_shapes() if x["name"] == "m1_130m_bf16")
    x = suite.make_inputs(s)
    for be in ("cuda", "triton"):
        for mode, env in modes(be):
            with torch.no_grad():
                f = lambda: ssmgen.selective_scan(*x, delta_softplus=True, backend=be)  # noqa
                ms = measure(lambda: round(with_env(env, lambda: do_bench(
                    f, warmup=10, rep=100, return_mode="median")), 4))
            add("m1_130m_bf16 fwd (do_bench)", be, mode, ms, "ms")
    with open(out_path, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
