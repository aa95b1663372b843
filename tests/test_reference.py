"""The reference against an independent scalar transcription of the recurrence, and the
equivalence of the input forms it accepts."""
import cmath
import math

import torch
from hypothesis import given, settings, strategies as st

from ssmgen.reference import selective_scan_ref


def scalar_scan(u, delta, A, B, C, D, z, dbias, softplus, groups_B, groups_C):
    """Plain Python loops over every (b, d, n, t): the recurrence as written in the paper."""
    bsz, dim, L = u.shape
    N = A.shape[1]
    cplx = A.is_complex()
    out = [[[0.0] * L for _ in range(dim)] for _ in range(bsz)]
    last = [[[0.0] * N for _ in range(dim)] for _ in range(bsz)]
    for b in range(bsz):
        for d in range(dim):
            x = [0j] * N
            for t in range(L):
                dt = float(delta[b, d, t]) + (float(dbias[d]) if dbias is not None else 0.0)
                if softplus:
                    dt = math.log1p(math.exp(dt)) if dt <= 20 else dt
                y = 0j
                for n in range(N):
                    a = complex(A[d, n])
                    if B.dim() == 2:
                        bb = complex(B[d, n])
                    else:
                        bb = complex(B[b, d // (dim // groups_B), n, t])
                    cc = complex(C[d, n]) if C.dim() == 2 else complex(
                        C[b, d // (dim // groups_C), n, t])
                    x[n] = cmath.exp(dt * a) * x[n] + dt * bb * float(u[b, d, t])
                    y += x[n] * cc
                o = 2 * y.real if cplx else y.real
                if D is not None:
                    o += float(D[d]) * float(u[b, d, t])
                if z is not None:
                    zz = float(z[b, d, t])
                    o *= zz / (1 + math.exp(-zz))
                out[b][d][t] = o
            last[b][d] = x
    lt = torch.tensor(last, dtype=torch.complex128)
    return torch.tensor(out, dtype=torch.float64), (lt if cplx else lt.real)


@settings(max_examples=25, deadline=None)
@given(cplx=st.booleans(), N=st.integers(1, 4), L=st.integers(1, 7), dim=st.sampled_from([1, 2, 4]),
       gB=st.sampled_from([0, 1, 2]), gC=st.sampled_from([0, 1, 2]), opts=st.lists(
           st.booleans(), min_size=4, max_size=4), seed=st.integers(0, 2**31 - 1))
def test_reference_matches_scalar_loops(cplx, N, L, dim, gB, gC, opts, seed):
    g = torch.Generator().manual_seed(seed)
    b = 2
    u = torch.randn(b, dim, L, generator=g)
    delta = 0.5 * torch.rand(b, dim, L, generator=g)
    A = -0.5 * torch.rand(dim, N, generator=g)
    cdt = torch.float32
    if cplx:
        A = torch.complex(A, torch.randn(dim, N, generator=g))
        cdt = torch.complex64

    def bc(groups):  # 0: constant, else groups (must divide dim)
        if groups == 0 or dim % groups:
            return torch.randn(dim, N, generator=g, dtype=cdt), 1
        return torch.randn(b, groups, N, L, generator=g, dtype=cdt), groups

    B, gb = bc(gB)
    C, gc = bc(gC)
    D = torch.randn(dim, generator=g) if opts[0] else None
    z = torch.randn(b, dim, L, generator=g) if opts[1] else None
    dbias = 0.1 * torch.rand(dim, generator=g) if opts[2] else None
    out, last = selective_scan_ref(u, delta, A, B, C, D, z, dbias, opts[3], True)
    eout, elast = scalar_scan(u, delta, A, B, C, D, z, dbias, opts[3], gb, gc)
    assert torch.allclose(out, eout, rtol=1e-10, atol=1e-10)
    assert torch.allclose(last, elast, rtol=1e-10, atol=1e-10)


def test_interleaved_and_complex_forms_agree():
    g = torch.Generator().manual_seed(0)
    b, d, L, N = 2, 3, 5, 4
    u, delta = torch.randn(b, d, L, generator=g), torch.rand(b, d, L, generator=g)
    A = torch.complex(-torch.rand(d, N, generator=g), torch.randn(d, N, generator=g))
    B = torch.randn(b, 1, N, L, generator=g, dtype=torch.complex64)
    C = torch.randn(b, N, L, generator=g, dtype=torch.complex64)
    inter = lambda X: torch.view_as_real(X).flatten(-2)  # (..., L, 2) -> (..., 2L)
    r1 = selective_scan_ref(u, delta, A, B, C, return_last_state=True)
    r2 = selective_scan_ref(u, delta, A, inter(B), inter(C), return_last_state=True)
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])
