"""Output and gradient buffers every backend's kernels write, in one layout:
out (batch, dim, L) in u's dtype; checkpoints (batch, dim, n_chunks, N[, 2]) fp32; last state
(batch, dim, N[, 2]) fp32; gradients of u / delta / z in u's dtype; dA, dD, d delta_bias and
constant dB / dC as per-batch-row fp32 partials (summed here after the kernel, no atomics);
variable dB / dC as fp32 zeros the kernel adds into."""
from __future__ import annotations

import os

import torch

from ssmgen.inputs import Call


def new(shape, dtype, device):
    """Uninitialized buffer; NaN-filled under SSMGEN_POISON=1 (tests), so an element a kernel
    fails to write shows up as NaN instead of passing by luck."""
    if os.environ.get("SSMGEN_POISON") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def n_chunks(call: Call) -> int:
    return -(-call.seqlen // call.spec.chunk_len)


def _kx(call: Call) -> tuple:
    return (2,) if call.spec.complex_A else ()


def forward_buffers(call: Call, save_ckpt: bool):
    """(out, checkpoints, last state or None)."""
    b, d, L, N, dev = call.batch, call.dim, call.seqlen, call.spec.d_state, call.u.device
    out = new((b, d, L), call.u.dtype, dev)
    ckpt = new((b, d, n_chunks(call), N) + _kx(call) if save_ckpt else (1,), torch.float32, dev)
    last = (new((b, d, N) + _kx(call), torch.float32, dev) if call.spec.return_last_state
            else None)
    return out, ckpt, last


def finish_last(call: Call, last):
    return torch.view_as_complex(last) if last is not None and call.spec.complex_A else last


def grad_buffers(call: Call) -> dict:
    spec, dev = call.spec, call.u.device
    b, d, L, N = call.batch, call.dim, call.seqlen, spec.d_state
    f32 = dict(dtype=torch.float32, device=dev)
    io = dict(dtype=call.u.dtype, device=dev)
    g = dict(du=new((b, d, L), **io), ddelta=new((b, d, L), **io),
             dz=new((b, d, L), **io) if spec.has_z else None,
             dA=new((b, d, N) + _kx(call), **f32),
             dD=new((b, d), **f32) if spec.has_D else None,
             ddbias=new((b, d), **f32) if spec.has_delta_bias else None)
    for X in ("B", "C"):
        t = getattr(call, X)
        g["d" + X] = (torch.zeros(t.shape, **f32) if t.dim() == 4
                      else new((b, d, N) + _kx(call), **f32))
    return g


def finish_grads(call: Call, g: dict) -> dict:
    """Sums the per-batch-row partials."""
    for n in ("dA", "dD", "ddbias"):
        if g[n] is not None:
            g[n] = g[n].sum(0)
    for X in ("B", "C"):
        if getattr(call, X).dim() == 2:
            g["d" + X] = g["d" + X].sum(0)
    return g
