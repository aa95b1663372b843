"""The float64 reference: the specification of every variant the IR accepts.

A sequential loop over L in float64 (complex128 for complex A), on any device, differentiable by
autograd, so tests take every gradient of the kernels from here. Semantics follow mamba-ssm's
`selective_scan_ref`:

    delta' = softplus(delta + delta_bias)            (each part optional)
    x_t    = exp(delta'_t A) * x_{t-1} + delta'_t B_t u_t        x_{-1} = 0 or initial_state
    y_t    = sum_n x_t C_t          (complex A: 2 * Re(sum_n x_t C_t))
    out    = (y + D u) * silu(z)                                 (each part optional)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .inputs import normalize


def _as_f64(x, cplx):
    return x.to(torch.complex128 if cplx else torch.float64)


def _bc_f64(X, layout, cplx, dim, groups):
    """Canonical B/C -> float64/complex128 broadcastable to (batch, dim, N, L) or (dim, N)."""
    if layout == "constant":
        return _as_f64(X, cplx)
    X = X.double()
    if cplx:  # interleaved (re, im) along the last dim
        X = torch.complex(X[..., 0::2], X[..., 1::2])
    return X.repeat_interleave(dim // groups, dim=1)  # (batch, dim, N, L)


def _scan(dt, u, A, Bx, Cx, x, reverse):
    """The recurrence over L from state x (batch, dim, N); returns (y (batch, dim, L), last x)."""
    cplx = A.is_complex()
    L = u.shape[-1]
    ys = [None] * L
    for t in (range(L - 1, -1, -1) if reverse else range(L)):
        dA = torch.exp(dt[:, :, t, None] * A)
        Bt = Bx if Bx.dim() == 2 else Bx[..., t]
        Ct = Cx if Cx.dim() == 2 else Cx[..., t]
        x = dA * x + (dt[:, :, t] * u[:, :, t])[..., None] * Bt
        y = (x * Ct).sum(-1)
        ys[t] = 2 * y.real if cplx else y
    if L == 0:  # an empty packed sequence: no output, the state stays
        return u.new_zeros(u.shape), x
    return torch.stack(ys, dim=-1), x


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, *, initial_state=None, cu_seqlens=None,
                       reverse=False):
    """Returns out (float64) or (out, last_state) with last_state (batch, dim, N) float64 or
    complex128 ((num_seqs, dim, N) with cu_seqlens). Accepts every input form
    `ssmgen.selective_scan` accepts.

    initial_state: the state before the first step (the last one when reverse); cu_seqlens:
    packed sequences, each scanned alone, from zero or from its row of initial_state
    (num_seqs, dim, N); reverse: the scan runs from t = L-1 to 0."""
    call = normalize(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                     initial_state=initial_state, cu_seqlens=cu_seqlens, reverse=reverse)
    s = call.spec
    cplx = s.complex_A
    u64, dt = call.u.double(), call.delta.double()
    if s.has_delta_bias:
        dt = dt + call.delta_bias.double()[:, None]
    if s.delta_softplus:
        dt = F.softplus(dt)
    A64 = _as_f64(call.A, cplx)
    Bx = _bc_f64(call.B, s.B_layout, cplx, call.dim, call.groups_B)
    Cx = _bc_f64(call.C, s.C_layout, cplx, call.dim, call.groups_C)
    zero = torch.zeros(1, call.dim, s.d_state, dtype=A64.dtype, device=u64.device)
    if call.cu_seqlens is None:
        x0 = (_as_f64(call.initial_state, cplx) if s.has_initial_state
              else zero.expand(call.batch, -1, -1))
        out, last = _scan(dt, u64, A64, Bx, Cx, x0, reverse)
    else:  # each packed sequence alone, from zero or its own initial state
        bounds = call.cu_seqlens.tolist()
        outs, lasts = [], []
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            def cut(X):
                return X if X.dim() == 2 else X[..., a:b]
            x0 = _as_f64(call.initial_state[i:i + 1], cplx) if s.has_initial_state else zero
            o, x = _scan(dt[..., a:b], u64[..., a:b], A64, cut(Bx), cut(Cx), x0, reverse)
            outs.append(o)
            lasts.append(x)
        out, last = torch.cat(outs, dim=-1), torch.cat(lasts, dim=0)
    if s.has_D:
        out = out + call.D.double()[:, None] * u64
    if s.has_z:
        out = out * F.silu(call.z.double())
    return (out, last) if return_last_state else out
