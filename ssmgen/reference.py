"""The float64 reference: the specification of every variant the IR accepts.

A sequential loop over L in float64 (complex128 for complex A), on any device, differentiable by
autograd, so tests take every gradient of the kernels from here. Semantics follow mamba-ssm's
`selective_scan_ref`:

    delta' = softplus(delta + delta_bias)            (each part optional)
    x_t    = exp(delta'_t A) * x_{t-1} + delta'_t B_t u_t        x_{-1} = 0
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


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Returns out (float64) or (out, last_state) with last_state (batch, dim, N) float64 or
    complex128. Accepts every input form `ssmgen.selective_scan` accepts."""
    call = normalize(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
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
    batch, dim, L = call.batch, call.dim, call.seqlen
    x = torch.zeros(batch, dim, s.d_state, dtype=A64.dtype, device=u64.device)
    ys = []
    for t in range(L):
        dA = torch.exp(dt[:, :, t, None] * A64)
        Bt = Bx if s.B_layout == "constant" else Bx[..., t]
        Ct = Cx if s.C_layout == "constant" else Cx[..., t]
        x = dA * x + (dt[:, :, t] * u64[:, :, t])[..., None] * Bt
        y = (x * Ct).sum(-1)
        ys.append(2 * y.real if cplx else y)
    out = torch.stack(ys, dim=-1)
    if s.has_D:
        out = out + call.D.double()[:, None] * u64
    if s.has_z:
        out = out * F.silu(call.z.double())
    return (out, x) if return_last_state else out
