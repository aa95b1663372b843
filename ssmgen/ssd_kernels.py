"""The SSD scan on generated kernels: the call's SSDSpec, and the autograd Function whose
backward reruns the state walk from the forward's per-block checkpoints (backends/triton_ssd.py).
"""
from __future__ import annotations

import dataclasses
import os

import torch

from .spec import SSDSpec

_TENSORS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def spec_of(c) -> SSDSpec:
    """The variant of a validated call (ssmgen.ssd.SSDCall): the one door from tensors to IR."""
    name = str(c.x.dtype).replace("torch.", "")
    return SSDSpec(d_state=c.d_state, headdim=c.headdim, dtype=name,
                   dt_dtype=str(c.dt.dtype).replace("torch.", ""),
                   has_D=c.D is not None, D_per_channel=c.D is not None and c.D.dim() == 2,
                   has_z=c.z is not None, has_dt_bias=c.dt_bias is not None,
                   dt_softplus=c.dt_softplus, has_initial_state=c.initial_states is not None,
                   return_final_states=c.return_final_states)


def config_of(spec: SSDSpec, config, batch: int = 1, heads: int = 64):
    """None (the heuristic default for these sizes), an SSDConfig or a dict of its fields."""
    from .backends import triton_ssd

    if config is None:
        return triton_ssd.default_config(spec, batch, heads)
    if isinstance(config, dict):
        config = triton_ssd.SSDConfig.from_dict(config)
    if not isinstance(config, triton_ssd.SSDConfig):
        raise TypeError(f"config must be None, a dict or an SSDConfig, got {type(config).__name__}")
    config.check()
    return config


def check_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set for "
                         f"Triton's CPU interpreter; x is on {x.device}")


class _SSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, meta, spec, cfg, *tensors):
        from .backends import triton_ssd

        c = dataclasses.replace(meta, **dict(zip(_TENSORS, tensors)))
        out, final, ckpt = triton_ssd.forward(c, spec, cfg)
        ctx.save_for_backward(*tensors, ckpt)
        ctx.meta, ctx.spec, ctx.cfg = meta, spec, cfg
        return (out, final) if spec.return_final_states else out

    @staticmethod
    def backward(ctx, dout, dfinal=None):
        from .backends import triton_ssd

        *tensors, ckpt = ctx.saved_tensors
        c = dataclasses.replace(ctx.meta, **dict(zip(_TENSORS, tensors)))
        g = triton_ssd.backward(c, ctx.spec, ctx.cfg, ckpt, dout, dfinal)
        grads = []
        for name, t in zip(_TENSORS, tensors):
            v = g[name] if t is not None else None
            grads.append(None if v is None else v.to(t.dtype))
        return (None, None, None, *grads)


def run(c, config=None):
    """out, or (out, final_states fp32) through the Triton kernels; differentiable."""
    spec = spec_of(c)
    cfg = config_of(spec, config, c.batch, c.heads)
    meta = dataclasses.replace(c, **{n: None for n in _TENSORS})
    return _SSD.apply(meta, spec, cfg, *(getattr(c, n) for n in _TENSORS))
