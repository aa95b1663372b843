"""Where a planned eager call spends its host time (GPU machine): cProfile of repeated decode
steps and tiny scan forwards per backend, and the cost of the primitives they use.
Usage: python benchmarks/host_profile.py"""
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
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
    print(f"=== {label}: {n} calls\n" + "\n".join(s.getvalue().splitlines()[4:30]))


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
    main()
