"""A fuzzer of malformed calls: every call either gives the reference's result or raises
ValueError / TypeError naming an argument, before anything is rendered or launched."""
import re

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st

import ssmgen
from ssmgen.backends import triton_backend
from ssmgen.reference import selective_scan_ref

ARGS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def base(cplx, seed):
    g = torch.Generator().manual_seed(seed)
    b, d, L, N = 2, 4, 9, 3
    A = -0.5 * torch.rand(d, N, generator=g)
    if cplx:
        A = torch.complex(A, torch.randn(d, N, generator=g))
    Lbc = 2 * L if cplx else L
    return {"u": torch.randn(b, d, L, generator=g), "delta": 0.5 * torch.rand(b, d, L, generator=g),
            "A": A, "B": torch.randn(b, 2, N, Lbc, generator=g),
            "C": torch.randn(b, N, Lbc, generator=g), "D": torch.randn(d, generator=g),
            "z": torch.randn(b, d, L, generator=g), "delta_bias": torch.rand(d, generator=g)}


def mutations():
    """(label, function of a tensor) that break or bend one argument."""
    return st.sampled_from([
        ("drop-dim", lambda t: t[0] if t.dim() > 1 else t[None]),
        ("add-dim", lambda t: t[None]),
        ("shrink-last", lambda t: t[..., :-1]),
        ("grow-first", lambda t: torch.cat([t, t[:1]], 0)),
        ("to-int", lambda t: t.real.to(torch.int32) if t.is_complex() else t.to(torch.int32)),
        ("to-double", lambda t: t.to(torch.complex128) if t.is_complex() else t.double()),
        ("to-half", lambda t: t.real.half() if t.is_complex() else t.half()),
        ("to-complex", lambda t: t.to(torch.complex64) if not t.is_complex() else t),
        ("meta-device", lambda t: t.to("meta")),
        ("empty", lambda t: t[..., :0]),
        ("transpose", lambda t: t.transpose(0, -1) if t.dim() > 1 else t),
        ("strided", lambda t: t.repeat_interleave(2, -1)[..., ::2]),  # same values, stride 2
        ("nan", lambda t: t.masked_fill(torch.rand(t.shape) < 0.2, float("nan"))
            if t.is_floating_point() else t),
        ("list", lambda t: t.tolist()),
        ("none", lambda t: None),
    ])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # patched per example
@given(cplx=st.booleans(), seed=st.integers(0, 1000),
       muts=st.lists(st.tuples(st.sampled_from(ARGS), mutations()), min_size=1, max_size=2),
       softplus=st.booleans())
@pytest.mark.interp
def test_malformed_calls_fail_cleanly_or_match_the_reference(monkeypatch, cplx, seed, muts,
                                                             softplus):
    a = base(cplx, seed)
    labels = []
    for name, (label, f) in muts:
        if not isinstance(a[name], torch.Tensor) or a[name].device.type == "meta":
            continue  # already broken beyond what a second mutation can apply to
        a[name] = f(a[name])
        labels.append(f"{name}:{label}")
    launched = []
    real_kernel = triton_backend.kernel

    def watch(*k, **kw):
        launched.append(k)
        return real_kernel(*k, **kw)

    monkeypatch.setattr(triton_backend, "kernel", watch)  # re-set each example: idempotent
    try:
        out = ssmgen.selective_scan(**a, delta_softplus=softplus, backend="triton",
                                    config={"chunk_len": 16, "block_l": 4, "block_d": 2})
    except (ValueError, TypeError) as e:
        event("refused")
        assert not launched, f"{labels}: a kernel was rendered before the error {e}"
        named = [n for n in ARGS + ["config", "batch"] if re.search(rf"\b{n}\b", str(e))]
        assert named, f"{labels}: the error does not name an argument: {e}"
        return
    event("ran")
    ref = selective_scan_ref(**a, delta_softplus=softplus)
    nan_o, nan_r = torch.isnan(out), torch.isnan(ref)
    assert torch.equal(nan_o, nan_r), f"{labels}: NaN pattern differs from the reference"
    ok = ~nan_r
    tol = 2e-2 if out.dtype != torch.float32 else 1e-4
    assert torch.allclose(out[ok].double(), ref[ok], rtol=tol, atol=tol * ref[ok].abs().max()
                          if ok.any() else 0), labels
