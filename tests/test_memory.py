"""Memory (GPU): forward and backward allocate what backends/buffers.py documents
(forward_bytes, backward_bytes), measured with torch.cuda.max_memory_allocated; a 1M-step
sequence runs forward and backward within that budget."""
import pytest
import torch

import ssmgen
from ssmgen import ops
from ssmgen.backends import buffers
from ssmgen.inputs import normalize

SLACK = 2**20  # the allocator's rounding and a few scalars


def _inputs(b, d, L, N, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    u, z = r(b, d, L).to(dtype), r(b, d, L).to(dtype)
    delta = (0.1 * torch.rand(b, d, L, device="cuda", generator=g)).to(dtype)
    A = -torch.rand(d, N, device="cuda", generator=g)
    B, C = r(b, 1, N, L).to(dtype), r(b, 1, N, L).to(dtype)
    D, bias = r(d), 0.1 * torch.rand(d, device="cuda", generator=g)
    return [x.requires_grad_() for x in (u, delta, A, B, C, D, z, bias)]


def _measure(backend, xs, det, monkeypatch):
    monkeypatch.setenv("SSMGEN_DETERMINISTIC", "1" if det else "0")
    u, delta, A, B, C, D, z, bias = xs
    kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True, backend=backend)
    dout = torch.randn_like(u)
    torch.autograd.grad(ssmgen.selective_scan(u, delta, A, B, C, **kw), xs, dout)  # compile
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = ssmgen.selective_scan(u, delta, A, B, C, **kw)
    fwd = torch.cuda.max_memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    mid = torch.cuda.memory_allocated()
    grads = torch.autograd.grad(out, xs, dout)
    bwd = torch.cuda.max_memory_allocated() - mid
    assert all(torch.isfinite(g).all() for g in grads)
    # what the docs promise for this call and its kernel config
    args = (u, delta, A, B, C, D, z, bias, True, False)
    call = normalize(*args)
    call, cfg = ops._kernel_config(backend, call, None, None, args, {})
    if det:
        import dataclasses
        call = dataclasses.replace(call, spec=call.spec.replace(deterministic=True))
    mod = __import__(f"ssmgen.backends.{backend}_backend", fromlist=["x"])
    _, slots, scratch = mod.backward_workspace(call, cfg)
    n = 1
    for s in scratch:
        n *= s
    fs, bs = ((mod.split_plan(call, cfg.fwd, "fwd")[0], mod.split_plan(call, cfg.bwd, "bwd")[0])
              if hasattr(mod, "split_plan") else (1, 1))
    sm = mod.step_major(call, cfg) if hasattr(mod, "step_major") else 0
    return (fwd, bwd, buffers.forward_bytes(call, True, fs),
            buffers.backward_bytes(call, slots, 4 * n, rows=bs, step_major=sm))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("det", [False, True])
def test_forward_and_backward_allocate_what_they_document(backend, det, monkeypatch):
    fwd, bwd, doc_fwd, doc_bwd = _measure(backend, _inputs(2, 512, 4096, 16), det, monkeypatch)
    print(f"{backend} det={det}: forward {fwd / 2**20:.1f} MiB (documented "
          f"{doc_fwd / 2**20:.1f}), backward {bwd / 2**20:.1f} MiB (documented "
          f"{doc_bwd / 2**20:.1f})")
    assert fwd <= doc_fwd + SLACK and bwd <= doc_bwd + SLACK
    assert fwd >= 0.8 * doc_fwd and bwd >= 0.8 * doc_bwd  # the documentation is not padded


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_a_million_steps_fit_and_match_chunked_calls(backend, monkeypatch):
    """L = 2**20 at dim 64: forward and backward within the documented memory, and the output
    equals four chained calls of L/4 (initial_state = the previous segment's last state)."""
    xs = _inputs(1, 64, 2**20, 16, seed=1)
    fwd, bwd, doc_fwd, doc_bwd = _measure(backend, xs, False, monkeypatch)
    assert fwd <= doc_fwd + SLACK and bwd <= doc_bwd + SLACK
    u, delta, A, B, C, D, z, bias = [x.detach() for x in xs]
    kw = dict(D=D, delta_bias=bias, delta_softplus=True, backend=backend)
    whole = ssmgen.selective_scan(u, delta, A, B, C, z=z, **kw)
    h, parts, q = None, [], 2**18
    for i in range(4):
        s = slice(i * q, (i + 1) * q)
        o, h = ssmgen.selective_scan(u[..., s], delta[..., s], A, B[..., s], C[..., s],
                                     z=z[..., s], return_last_state=True, initial_state=h, **kw)
        parts.append(o)
    seg = torch.cat(parts, -1).float()
    assert torch.isfinite(whole).all()
    assert ((whole.float() - seg).norm() / seg.norm()).item() < 1e-2  # bf16 outputs
