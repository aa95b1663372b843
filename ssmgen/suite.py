"""The standard benchmark shapes (suite.json, shipped with the package) and their random inputs.

Inputs are drawn as the suite file says: u, z, B, C ~ N(0,1); delta = 0.5*U(0,1);
A = -0.5*U(0,1) (complex: imaginary part N(0,1)); D ~ N(0,1); delta_bias = 0.1*U(0,1);
delta_softplus=True; complex B/C in mamba's interleaved real form.
"""
from __future__ import annotations

import importlib.resources
import json

DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def load(path: str | None = None) -> dict:
    if path is None:
        return json.loads(importlib.resources.files("ssmgen").joinpath("suite.json").read_text())
    with open(path) as f:
        return json.load(f)


def scan_shapes(path: str | None = None) -> list:
    return load(path)["selective_scan"]


def make_inputs(shape: dict, device="cuda", seed: int = 0, batch=None, dim=None, seqlen=None):
    """[u, delta, A, B, C, D, z, delta_bias] for a suite shape (sizes may be overridden; the
    optional keys B_layout / C_layout = "constant" give (dim, N) B / C)."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    b = batch or shape["batch"]
    d = dim or shape["dim"]
    L = seqlen or shape["seqlen"]
    N, G = shape["d_state"], shape.get("groups", 1)
    dt = getattr(torch, DTYPES[shape["dtype"]])

    def randn(*s, dtype=dt):
        if dtype.is_complex:  # both parts random
            return torch.randn(*s, generator=g, device=device, dtype=dtype)
        return torch.randn(*s, generator=g, device=device).to(dtype)

    def rand(*s, dtype=dt):
        return torch.rand(*s, generator=g, device=device).to(dtype)

    cplx = shape.get("A", "real") == "complex"
    u, z = randn(b, d, L), randn(b, d, L)
    delta = 0.5 * rand(b, d, L)
    A = -0.5 * rand(d, N, dtype=torch.float32)
    if cplx:
        A = torch.complex(A, randn(d, N, dtype=torch.float32))
    Lbc = 2 * L if cplx else L

    def bc(layout):  # "variable" (the suite's) or "constant" (dim, N) like A
        if layout == "constant":
            return randn(d, N, dtype=torch.complex64 if cplx else torch.float32)
        return randn(b, G, N, Lbc)

    B, C = bc(shape.get("B_layout", "variable")), bc(shape.get("C_layout", "variable"))
    D = randn(d, dtype=torch.float32)
    delta_bias = 0.1 * rand(d, dtype=torch.float32)
    return [u, delta, A, B, C, D, z, delta_bias]
