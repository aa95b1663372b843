"""The SSD scan on generated kernels: the call's SSDSpec, and the autograd Function whose
backward reruns the state walk from the forward's per-block checkpoints (backends/triton_ssd.py).
seq_idx rides along as a non-differentiable input; varlen states are computed after the kernels
from their checkpoints (ssmgen.ssd.varlen_states), without gradient.
"""
from __future__ import annotations

import os
from typing import List, Optional

import torch

from . import plans
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
                   return_final_states=c.return_final_states, has_seq_idx=c.seq_idx is not None)


def _module(backend: str):
    from .backends import cuda_ssd, triton_ssd

    return cuda_ssd if backend == "cuda" else triton_ssd


def _classes(backend: str) -> tuple:
    """The backend's config classes: Triton's walk (SSDConfig) and chunk form
    (SSDChunkConfig), or CUDA's CudaSSDConfig."""
    if backend == "cuda":
        return (_module("cuda").CONFIG,)
    from .backends import triton_ssd, triton_ssd_chunk

    return triton_ssd.CONFIG, triton_ssd_chunk.CONFIG


def _impl(cfg):
    """The module that runs cfg: backends/triton_ssd_chunk.py for the chunk form's config,
    else backends/triton_ssd.py (which launches a CUDA config's kernels through cuda_ssd)."""
    from .backends import triton_ssd, triton_ssd_chunk

    return triton_ssd_chunk if isinstance(cfg, triton_ssd_chunk.CONFIG) else triton_ssd


def config_of(spec: SSDSpec, config, batch: int = 1, heads: int = 64, backend: str = "triton"):
    """None (the heuristic default for these sizes), the backend's config (SSDConfig or
    SSDChunkConfig for Triton, CudaSSDConfig for CUDA) or a dict of its fields (with
    form="chunk" for the chunk form's)."""
    mod = _module(backend)
    classes = _classes(backend)
    if config is None:
        return mod.default_config(spec, batch, heads)
    if isinstance(config, dict):
        fields = dict(config)
        form = fields.pop("form", "walk")
        forms = ("walk", "chunk")[:len(classes)]  # the chunk form is Triton's
        if form not in forms:
            raise ValueError(f"config.form must be one of {forms} for backend={backend!r}, "
                             f"got {form!r}")
        config = classes[forms.index(form)].from_dict(fields)
    if not isinstance(config, classes):
        raise TypeError(f"config for backend={backend!r} must be None, a dict or a "
                        f"{' or '.join(k.__name__ for k in classes)}, got {type(config).__name__}")
    config.check(spec)
    return config


def decode_config(text: str):
    """The config that encode() wrote: a CudaSSDConfig where the text starts with its prefix."""
    from .backends.triton_ssd_chunk import CONFIG as chunk

    cuda = _module("cuda").CONFIG
    for cls in (cuda, chunk):
        if text.startswith(cls.PREFIX + ","):
            return cls.decode(text)
    return _module("triton").CONFIG.decode(text)


def check_device(x: torch.Tensor, backend: str = "triton") -> None:
    if backend == "cuda":
        from .backends import cuda_runtime

        if x.device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors; x is on {x.device}")
        if not cuda_runtime.available():
            raise RuntimeError("backend='cuda' needs CuPy and a CUDA compiler (NVRTC or nvcc)")
        return
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set for "
                         f"Triton's CPU interpreter; x is on {x.device}")


def _call(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_lo, dt_hi,
          return_final_states):
    from .ssd import _normalize

    # seq_idx's order was checked by the public call: no second device-to-host copy here
    return _normalize(x, dt, A, B, C, None, D=D, z=z, dt_bias=dt_bias,
                      initial_states=initial_states, seq_idx=seq_idx, dt_softplus=dt_softplus,
                      dt_limit=(dt_lo, dt_hi), return_final_states=return_final_states,
                      check_values=False)


# torch.library custom ops with fake implementations, so torch.compile traces through the
# kernels (attention-gym's pattern). config: SSDConfig.encode().
@torch.library.custom_op("ssmgen::ssd_fwd", mutates_args=())
def ssd_fwd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
            initial_states: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
            dt_softplus: bool, dt_lo: float, dt_hi: float, return_final_states: bool,
            config: str, for_backward: bool, keep_ckpt: bool) -> List[torch.Tensor]:
    """[out, final states (empty when not asked for), per-block checkpoints (empty unless
    for_backward or keep_ckpt), what the split backward reads (Yi, the entering states' part
    of the output, and with z the output before the gate; empty unless for_backward and the
    config's backward reads it)]"""
    c = _call(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_lo, dt_hi,
              return_final_states)
    return _forward(c, config, for_backward, keep_ckpt)


def _forward(c, config: str, for_backward: bool, keep_ckpt: bool) -> List[torch.Tensor]:
    cfg = decode_config(config)
    out, final, ckpt, saved = _impl(cfg).forward(c, spec_of(c), cfg, for_backward, keep_ckpt)
    # placeholders are separate tensors: a custom op's outputs may not alias each other
    empty = c.x.new_empty
    return [out, empty(0, dtype=torch.float32) if final is None else final,
            empty(0) if ckpt is None else ckpt, empty(0) if saved is None else saved]


@ssd_fwd.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_lo, dt_hi,
      return_final_states, config, for_backward, keep_ckpt):
    b, L, H, P = x.shape
    N = B.shape[-1]
    cfg = decode_config(config)
    nblk = -(-L // cfg.block_q)
    final = (x.new_empty((b, H, P, N), dtype=torch.float32) if return_final_states
             else x.new_empty(0, dtype=torch.float32))
    n = _impl(cfg).saved_count(cfg, z is not None)
    saved = x.new_empty((n, b, L, H, P)) if for_backward and n else x.new_empty(0)
    ckpt = (x.new_empty((b, H, nblk, P, N)) if for_backward or keep_ckpt else x.new_empty(0))
    return [x.new_empty((b, L, H, P)), final, ckpt, saved]


@torch.library.custom_op("ssmgen::ssd_bwd", mutates_args=())
def ssd_bwd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
            initial_states: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
            dt_softplus: bool, dt_lo: float, dt_hi: float, return_final_states: bool,
            config: str, ckpt: torch.Tensor, saved: torch.Tensor, dout: torch.Tensor,
            dfinal: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """The gradients of the 9 float inputs in their shapes and dtypes (empty when absent)."""
    c = _call(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_lo, dt_hi,
              return_final_states)
    cfg = decode_config(config)
    g = _impl(cfg).backward(c, spec_of(c), cfg, ckpt, dout, dfinal,
                            saved if saved.numel() else None)
    ins = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    return [x.new_empty(0) if t is None else g[n].to(t.dtype) for n, t in zip(_TENSORS, ins)]


@ssd_bwd.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_lo, dt_hi,
      return_final_states, config, ckpt, saved, dout, dfinal):
    ins = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    return [x.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
            for t in ins]


class _SSD(torch.autograd.Function):
    # call: the validated SSDCall for an eager call on real tensors, which then runs the ops'
    # implementation directly (no custom-op dispatch, no second validation); None under
    # tracing or for meta / fake tensors, which take the op and its fake
    @staticmethod
    def forward(ctx, flags, call, for_backward, keep_ckpt, seq_idx, *tensors):
        if call is not None:
            out, final, ckpt, saved = _forward(call, flags[-1], for_backward, keep_ckpt)
        else:
            out, final, ckpt, saved = torch.ops.ssmgen.ssd_fwd(*tensors, seq_idx, *flags,
                                                               for_backward, keep_ckpt)
        ctx.save_for_backward(seq_idx, *tensors, ckpt, saved)
        ctx.flags = flags
        if not flags[3]:
            ctx.mark_non_differentiable(final)  # an empty placeholder
        ctx.mark_non_differentiable(ckpt)  # returned for the varlen states only
        # no zero gradient made for outputs the loss does not reach: for ckpt that would be a
        # checkpoint-sized buffer (512 MiB on ssd_1.3b) alive during the backward
        ctx.set_materialize_grads(False)
        return out, final, ckpt

    @staticmethod
    def backward(ctx, dout, dfinal, _):
        seq_idx, *tensors, ckpt, saved = ctx.saved_tensors
        ret_final = ctx.flags[3]
        if dout is None:  # only the final states reach the loss
            dout = torch.zeros_like(tensors[0])
        g = torch.ops.ssmgen.ssd_bwd(*tensors, seq_idx, *ctx.flags, ckpt, saved, dout,
                                     dfinal if ret_final else None)
        return (None, None, None, None, None,
                *(x if t is not None else None for x, t in zip(g, tensors)))


def run(c, config=None, backend: str = "triton"):
    """(out, final_states fp32 (an empty placeholder unless asked for), varlen states fp32 or
    None) through the backend's kernels ("triton" or "cuda"); out and final_states are
    differentiable."""
    from .ssd import varlen_states

    spec = spec_of(c)
    eager = plans.runs_kernels_directly(c.x)
    # what the split backward reads (x-sized buffers) is saved only where a backward can follow
    tensors = [getattr(c, n) for n in _TENSORS]
    for_backward = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)
    cfg = config_of(spec, config, c.batch, c.heads, backend)
    flags = (c.dt_softplus, c.dt_limit[0], c.dt_limit[1], c.return_final_states, cfg.encode())
    # the checkpoints are kept where a backward can follow or the varlen states read them: an
    # inference call's forward keeps none (the walk's fwdo writes none, ssd_fwdo_v1: 537 MB of
    # stores less on ssd_1.3b; the chunk form's cout reads the chunk states, freed after it)
    out, final, ckpt = _SSD.apply(flags, c if eager else None, for_backward,
                                  c.return_varlen_states, c.seq_idx, *tensors)
    varlen = None
    if c.return_varlen_states:
        # the checkpoints hold the state entering each block of block_q steps, rounded to x's
        # dtype (the peer reads its chunk states rounded to x's dtype here too)
        with torch.no_grad():
            varlen = varlen_states(c, ckpt[0].transpose(0, 1), cfg.block_q)
    return out, final, varlen
