"""Mamba-2's SSD (state space duality): the selective scan with one scalar decay per head.

Drop-in for mamba-ssm's `mamba_chunk_scan_combined` (same arguments, shapes and returns).
Semantics, per head h (B and C of the head's group h // (heads // groups)):

    dt'  = clamp(softplus(dt + dt_bias), dt_limit[0], dt_limit[1])   (bias, softplus optional)
    h_t  = exp(dt'_t A_h) h_{t-1} + dt'_t x_t B_t^T    h: (headdim, N), h_{-1} = initial_states or 0
    y_t  = h_t C_t + D x_t
    out  = y * silu(z)                                  (D, z optional)

The clamp is always applied, as in the peer's fused kernel: with the default (0, inf) it sends a
negative dt' (possible only without softplus) to zero. softplus(v) = v for v > 20, as in the peer.

Two implementations:
  ssd_ref      the specification: a float64 loop over L, differentiable by autograd (slow).
  ssd_chunked  the chunked algorithm in PyTorch (fp32; inputs are cast to fp32 before the
               matmuls, so bf16 inputs do not yet use bf16 tensor cores), autograd backward.

Accepted dtypes: x, B, C, z share one dtype, float32 / float16 / bfloat16 (out has it too); dt
is in x's dtype or float32; A, D, dt_bias and initial_states may be any of the three (read as
float32, exactly). final_states are float32. chunk_size is any positive int (the peer does not
ask for a power of two either). seq_idx, cu_seqlens and return_varlen_states are refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import ssd_kernels  # registers the custom ops ssmgen::ssd_fwd / ssd_bwd
from .inputs import _check_tensor
from .spec import MAX_D_STATE

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("triton", "torch", "reference")
DEFAULT_DT_LIMIT = (0.0, float("inf"))


@dataclass
class SSDCall:
    """A validated call: the tensors as given (no copies) and the sizes."""

    x: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: Optional[torch.Tensor]
    z: Optional[torch.Tensor]
    dt_bias: Optional[torch.Tensor]
    initial_states: Optional[torch.Tensor]
    chunk_size: Optional[int]
    dt_softplus: bool
    dt_limit: tuple
    return_final_states: bool
    batch: int
    seqlen: int
    heads: int
    headdim: int
    groups: int
    d_state: int


def _shape(name, t, want, what):
    if tuple(t.shape) != tuple(want):
        raise ValueError(f"{name} must have shape {what} = {tuple(want)}, got {tuple(t.shape)}")


def _float(name, t, allowed=FLOATS):
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must be {names}, got {t.dtype}")


def _normalize(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
               seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=DEFAULT_DT_LIMIT,
               return_final_states=False, return_varlen_states=False) -> SSDCall:
    """normalize_ssd; chunk_size=None is allowed here (the reference has no chunks)."""
    for name, v in (("seq_idx", seq_idx), ("cu_seqlens", cu_seqlens)):
        if v is not None:
            raise ValueError(f"{name} is not supported yet (pass None)")
    if return_varlen_states is not False:
        raise ValueError("return_varlen_states is not supported yet (pass False)")
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        _check_tensor(name, t)
    _float("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, seqlen, heads, headdim), got {tuple(x.shape)}")
    batch, L, H, P = x.shape
    if min(batch, L, H, P) == 0:
        raise ValueError(f"x must be non-empty (every size >= 1), got {tuple(x.shape)}")
    device = x.device
    _shape("dt", dt, (batch, L, H), "(batch, seqlen, heads)")
    _float("dt", dt, (x.dtype, torch.float32))
    _shape("A", A, (H,), "(heads,)")
    _float("A", A)
    if B.dim() != 4 or B.shape[:2] != (batch, L):
        raise ValueError(f"B must have shape (batch={batch}, seqlen={L}, groups, d_state), got "
                         f"{tuple(B.shape)}")
    G, N = B.shape[2], B.shape[3]
    if G == 0 or H % G != 0:
        raise ValueError(f"B: groups={G} must divide heads={H}")
    if not 1 <= N <= MAX_D_STATE:
        raise ValueError(f"B: d_state must be in 1..{MAX_D_STATE}, got {N}")
    _float("B", B, (x.dtype,))
    _shape("C", C, B.shape, "B's shape (batch, seqlen, groups, d_state)")
    _float("C", C, (x.dtype,))
    if D is not None:
        _check_tensor("D", D)
        if tuple(D.shape) not in ((H,), (H, P)):
            raise ValueError(f"D must have shape (heads,) = ({H},) or (heads, headdim) = "
                             f"{(H, P)}, got {tuple(D.shape)}")
        _float("D", D)
    if z is not None:
        _check_tensor("z", z)
        _shape("z", z, x.shape, "x's shape (batch, seqlen, heads, headdim)")
        _float("z", z, (x.dtype,))
    if dt_bias is not None:
        _check_tensor("dt_bias", dt_bias)
        _shape("dt_bias", dt_bias, (H,), "(heads,)")
        _float("dt_bias", dt_bias)
    if initial_states is not None:
        _check_tensor("initial_states", initial_states)
        _shape("initial_states", initial_states, (batch, H, P, N),
               "(batch, heads, headdim, d_state)")
        _float("initial_states", initial_states)
    for name, t in (("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("dt_bias", dt_bias), ("initial_states", initial_states)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but x is on {device}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not isinstance(dt_softplus, bool):
        raise TypeError(f"dt_softplus must be a bool, got {dt_softplus!r}")
    if not isinstance(return_final_states, bool):
        raise TypeError(f"return_final_states must be a bool, got {return_final_states!r}")
    try:
        lo, hi = dt_limit
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi))
    except (TypeError, ValueError):
        ok = False
    if not ok or math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"dt_limit must be a pair of numbers (low, high) with low <= high, got "
                         f"{dt_limit!r}")
    return SSDCall(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                   initial_states=initial_states, chunk_size=chunk_size,
                   dt_softplus=dt_softplus, dt_limit=(float(lo), float(hi)),
                   return_final_states=return_final_states, batch=batch, seqlen=L, heads=H,
                   headdim=P, groups=G, d_state=N)


def normalize_ssd(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                  seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=DEFAULT_DT_LIMIT,
                  return_final_states=False, return_varlen_states=False) -> SSDCall:
    """Every check of a mamba_chunk_scan_combined call, before any compute; each error
    (ValueError for shapes and values, TypeError for types) names the argument."""
    if chunk_size is None:
        raise TypeError("chunk_size must be an int, got None")
    return _normalize(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                      cu_seqlens, dt_softplus, dt_limit, return_final_states, return_varlen_states)


def _dt(c: SSDCall, dtype) -> torch.Tensor:
    """dt' (batch, seqlen, heads) in dtype: bias, softplus, clamp."""
    dt = c.dt.to(dtype)
    if c.dt_bias is not None:
        dt = dt + c.dt_bias.to(dtype)
    if c.dt_softplus:
        dt = F.softplus(dt)  # threshold 20, as the peer's `where(dt <= 20, softplus(dt), dt)`
    return dt.clamp(min=c.dt_limit[0], max=c.dt_limit[1])


def _finish(c: SSDCall, y, dtype):
    """y + D x, then the z gate, in dtype."""
    if c.D is not None:
        D = c.D.to(dtype)
        y = y + c.x.to(dtype) * (D[:, None] if D.dim() == 1 else D)
    if c.z is not None:
        y = y * F.silu(c.z.to(dtype))
    return y


def _ref(c: SSDCall):
    f64 = torch.float64
    r = c.heads // c.groups
    x = c.x.to(f64)
    dt = _dt(c, f64)
    A = c.A.to(f64)
    B = c.B.to(f64).repeat_interleave(r, dim=2)  # (batch, L, heads, N)
    C = c.C.to(f64).repeat_interleave(r, dim=2)
    if c.initial_states is not None:
        h = c.initial_states.to(f64)
    else:
        h = x.new_zeros(c.batch, c.heads, c.headdim, c.d_state)
    ys = []
    for t in range(c.seqlen):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1))
    y = _finish(c, torch.stack(ys, dim=1), f64)
    return (y, h) if c.return_final_states else y


def ssd_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, dt_softplus=False,
            dt_limit=DEFAULT_DT_LIMIT, return_final_states=False):
    """The specification: the recurrence step by step in float64. Returns out (float64) or
    (out, final_states) both float64; differentiable in every input."""
    return _ref(_normalize(x, dt, A, B, C, None, D=D, z=z, dt_bias=dt_bias,
                           initial_states=initial_states, dt_softplus=dt_softplus,
                           dt_limit=dt_limit, return_final_states=return_final_states))


def segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): out[i, j] = a[j+1] + ... + a[i] for i >= j, -inf above the
    diagonal. Sums of the terms themselves, not differences of cumulative sums, so that a long
    prefix does not cost precision (exp of it is the decay from step j to step i)."""
    T = a.shape[-1]
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    s = a[..., :, None].expand(*a.shape, T).masked_fill(~strict, 0.0).cumsum(dim=-2)
    return s.masked_fill(~torch.ones_like(strict).tril(), -math.inf)


def _chunked(c: SSDCall):
    f32 = torch.float32
    b, L, H, P, G, N = c.batch, c.seqlen, c.heads, c.headdim, c.groups, c.d_state
    Q = min(c.chunk_size, L)  # a chunk longer than L is one chunk of L
    nc = -(-L // Q)
    pad = nc * Q - L  # padded steps have dt' = 0: they neither decay nor add to the state
    r = H // G
    dt = F.pad(_dt(c, f32), (0, 0, 0, pad))
    x = F.pad(c.x.to(f32), (0, 0, 0, 0, 0, pad))
    B = F.pad(c.B.to(f32), (0, 0, 0, 0, 0, pad))
    C = F.pad(c.C.to(f32), (0, 0, 0, 0, 0, pad))
    # chunks: index (batch, chunk, step l or s, group g, head-in-group r, ...)
    x = x.reshape(b, nc, Q, G, r, P)
    dt = dt.reshape(b, nc, Q, G, r)
    B = B.reshape(b, nc, Q, G, N)
    C = C.reshape(b, nc, Q, G, N)
    dA = dt * c.A.to(f32).reshape(G, r)
    xdt = x * dt[..., None]
    # 1. within a chunk, the quadratic form: y_l = sum_{s<=l} (C_l . B_s) exp(dA_{s+1..l}) dt_s x_s
    decay = torch.exp(segsum(dA.permute(0, 1, 3, 4, 2)))  # (b, nc, G, r, Q_l, Q_s)
    CB = torch.einsum("bclgn,bcsgn->bcgls", C, B)
    y = torch.einsum("bcgrls,bcsgrp->bclgrp", CB[:, :, :, None] * decay, xdt)
    # 2. each chunk's own end state: sum_s exp(dA_{s+1..end}) dt_s x_s B_s^T
    after = F.pad(dA[:, :, 1:], (0, 0, 0, 0, 0, 1)).flip(2).cumsum(2).flip(2)  # dA_{s+1..end}
    states = torch.einsum("bcsgn,bcsgrp->bcgrpn", B, xdt * torch.exp(after)[..., None])
    # 3. across chunks: the state entering each chunk, and the final one, as one matmul with
    #    the chunk-to-chunk decays: h_in[i] = sum_{j<=i} exp(total_{j+1..i}) [h0, states][j]
    if c.initial_states is not None:
        h0 = c.initial_states.to(f32).reshape(b, 1, G, r, P, N)
    else:
        h0 = states.new_zeros(b, 1, G, r, P, N)
    total = F.pad(dA.sum(2).permute(0, 2, 3, 1), (1, 0))  # (b, G, r, nc + 1)
    h = torch.einsum("bgrij,bjgrpn->bigrpn", torch.exp(segsum(total)),
                     torch.cat([h0, states], dim=1))
    h_in, final = h[:, :-1], h[:, -1]
    # 4. the entering state's contribution: exp(dA_{0..l}) C_l h_in
    y = y + torch.einsum("bclgn,bcgrpn->bclgrp", C, h_in) * torch.exp(dA.cumsum(2))[..., None]
    y = _finish(c, y.reshape(b, nc * Q, H, P)[:, :L], f32)
    return (y, final.reshape(b, H, P, N)) if c.return_final_states else y


def ssd_chunked(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                dt_softplus=False, dt_limit=DEFAULT_DT_LIMIT, return_final_states=False):
    """The chunked algorithm in fp32 PyTorch. Returns out (float32) or (out, final_states
    float32); autograd gives the backward."""
    return _chunked(normalize_ssd(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                                  initial_states=initial_states, dt_softplus=dt_softplus,
                                  dt_limit=dt_limit, return_final_states=return_final_states))


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                              initial_states=None, seq_idx=None, cu_seqlens=None,
                              dt_softplus=False, dt_limit=DEFAULT_DT_LIMIT,
                              return_final_states=False, return_varlen_states=False, *,
                              backend=None, config=None):
    """Drop-in for mamba-ssm's mamba_chunk_scan_combined.

    x, z: (batch, seqlen, heads, headdim); dt: (batch, seqlen, heads); A, dt_bias: (heads,);
    B, C: (batch, seqlen, groups, d_state), groups dividing heads; D: (heads, headdim) or
    (heads,); initial_states: (batch, heads, headdim, d_state). Returns out (x's dtype) or
    (out, final_states float32). backend: "triton" (generated kernels; the default on CUDA
    tensors; on CPU tensors only under TRITON_INTERPRET=1), "torch" (the chunked algorithm in
    PyTorch; the default on CPU tensors) or "reference" (the float64 loop). config: the Triton
    kernels' SSDConfig (or a dict of its fields); None: the default for the variant."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    c = normalize_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                      cu_seqlens, dt_softplus, dt_limit, return_final_states, return_varlen_states)
    if backend is None:
        backend = "triton" if x.is_cuda else "torch"
    if config is not None and backend != "triton":
        raise ValueError(f"config applies to backend='triton' only, got backend={backend!r}")
    if backend == "triton":
        ssd_kernels.check_device(x)
        return ssd_kernels.run(c, config)
    res = _ref(c) if backend == "reference" else _chunked(c)
    if not return_final_states:
        return res.to(x.dtype)
    return res[0].to(x.dtype), res[1].to(torch.float32)
