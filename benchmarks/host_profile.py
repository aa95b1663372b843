"""Where a planned eager call spends its host time (GPU machine): cProfile of repeated decode
steps, tiny scan forwards and tiny forward+backward calls per backend, the kernels a
forward+backward launches (torch.profiler), and the cost of the primitives they use.
Usage: python benchmarks/host_profile.py [train]   (train: the forward+backward part only)"""
import cProfile
import io
import pstats
import timeit

import torch

import ssmgen
from ssmgen import bench, plans


def primitives(t):
    from triton import knobs

    e = torch.empty(64, 64, device="cuda")
    items = {
        "torch.empty cuda (64, 64)": lambda: torch.empty((64, 64), dtype=torch.float32,
                                                          device=t.device),
        "torch.cuda.current_device()": torch.cuda.current_device,
        "_cuda_getCurrentRawStream(0)": lambda: torch._C._cuda_getCurrentRawStream(0),
        "plans.meta(cuda tensor)": lambda: plans.meta(t),
        "t.data_ptr()": t.data_ptr,
        "t.device": lambda: t.device,
        "knobs.runtime.launch_enter_hook": lambda: knobs.runtime.launch_enter_hook,
        "tensor.view(64, 64)": lambda: e.view(64, 64),
    }
    for name, f in items.items():
        n = 20000
        print(f"{name:36s} {timeit.timeit(f, number=n) / n * 1e6:7.2f} us")


def profile(label, fn, n):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30)
    print(f"=== {label}: {n} calls\n" + "\n".join(s.getvalue().splitlines()[4:42]))


def kernels(label, fn, n=20):
    """The GPU work of one call: kernels and memory operations per call, and their device time."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    print(f"=== {label}: device work per call (mean of {n})")
    rows = [e for e in prof.key_averages() if e.device_time_total > 0]
    for e in sorted(rows, key=lambda e: -e.device_time_total)[:25]:
        print(f"  {e.count / n:5.1f}x  {e.device_time_total / n:8.1f} us device"
              f"  {e.cpu_time_total / n:8.1f} us cpu  {e.key[:90]}")


def train(dtype=torch.float32):
    """Tiny forward+backward (b1 d64 L64 N16, every option, grads on every input)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    b, d, L, N = 1, 64, 64, 16
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    x = [r(b, d, L).to(dtype), (0.5 * torch.rand(b, d, L, generator=g, device="cuda")).to(dtype),
         -0.5 * torch.rand(d, N, generator=g, device="cuda"), r(b, N, L).to(dtype),
         r(b, N, L).to(dtype), r(d), r(b, d, L).to(dtype),
         0.1 * torch.rand(d, generator=g, device="cuda")]
    x = [t.requires_grad_(True) for t in x]
    dout = torch.randn_like(x[0])
    for be in ("cuda", "triton"):
        fb = lambda: torch.autograd.backward(  # noqa: E731
            ssmgen.selective_scan(*x, delta_softplus=True, backend=be), dout)
        print(f"--- fwd+bwd {be} {dtype}: {bench._time_eager(fb, calls=100) * 1e3:.1f} us/call")
        profile(f"fwd+bwd {be} b1 d64 L64 {dtype}", fb, 300)
        kernels(f"fwd+bwd {be} b1 d64 L64 {dtype}", fb)
    ssi = bench.peer_import("mamba_ssm.ops.selective_scan_interface")
    if ssi is not None:
        fb = lambda: torch.autograd.backward(  # noqa: E731
            ssi.selective_scan_fn(*x, delta_softplus=True), dout)
        us = bench._time_eager(fb, calls=100) * 1e3
        print(f"--- fwd+bwd mamba-ssm {dtype}: {us:.1f} us/call")
        kernels(f"fwd+bwd mamba-ssm {dtype}", fb)


def main():
    s = dict(batch=64, dim=4096, d_state=16, dtype="bfloat16")
    a = bench.step_inputs(s)
    primitives(a[0])
    kw = dict(z=a[7], dt_bias=a[8], dt_softplus=True)
    for be in ("triton", "cuda"):
        profile(f"step {be}", lambda: ssmgen.selective_state_update(*a[:7], **kw, backend=be),
                2000)
    g = torch.Generator(device="cuda").manual_seed(0)
    b, d, L, N = 1, 64, 64, 16
    x = [torch.randn(b, d, L, generator=g, device="cuda"),
         torch.rand(b, d, L, generator=g, device="cuda"),
         -torch.rand(d, N, generator=g, device="cuda"),
         torch.randn(b, N, L, generator=g, device="cuda"),
         torch.randn(b, N, L, generator=g, device="cuda")]
    for be in ("cuda", "triton"):
        with torch.no_grad():
            profile(f"scan fwd {be} b1 d64 L64",
                    lambda: ssmgen.selective_scan(*x, delta_softplus=True, backend=be), 500)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["train"]:
        train()
        train(torch.bfloat16)
    else:
        main()
