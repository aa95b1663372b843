"""Mamba-2's SSD (state space duality): the selective scan with one scalar decay per head.

Drop-in for mamba-ssm's `mamba_chunk_scan_combined` (same arguments, shapes and returns).
Semantics, per head h (B and C of the head's group h // (heads // groups)):

    dt'  = clamp(softplus(dt + dt_bias), dt_limit[0], dt_limit[1])   (bias, softplus optional)
    h_t  = exp(dt'_t A_h) h_{t-1} + dt'_t x_t B_t^T    h: (headdim, N), h_{-1} = initial_states or 0
    y_t  = h_t C_t + D x_t
    out  = y * silu(z)                                  (D, z optional)

The clamp is always applied, as in the peer's fused kernel: with the default (0, inf) it sends a
negative dt' (possible only without softplus) to zero. softplus(v) = v for v > 20, as in the peer.

Three implementations, each with every argument below (packed sequences included), forward
and backward:
  ssd_ref      the specification: a float64 loop over L, differentiable by autograd (slow).
  ssd_chunked  the chunked algorithm in PyTorch (fp32; inputs are cast to fp32 before the
               matmuls, so bf16 inputs do not yet use bf16 tensor cores), autograd backward.
  kernels      generated Triton kernels (ssmgen.ssd_kernels, backends/triton_ssd.py), the
               default on CUDA tensors, or generated CUDA kernels (backends/cuda_ssd.py, the
               same algorithm with the tiles in shared memory), backend="cuda".

Packed sequences (mamba-ssm's semantics, with s_{-1} = 0):

    seq_idx (batch, seqlen) int32, never decreasing along seqlen: step t starts a new sequence
      where s_t != s_{t-1}, and there the state restarts from zero: h_t = dt'_t x_t B_t^T.
      So initial_states belong to sequence 0: they reach the first packed sequence only when
      its seq_idx is 0 (otherwise they are dropped, and their gradient is zero).
      final_states are the last sequence's.
    return_varlen_states=True with cu_seqlens (num_seqs + 1,) int (batch 1; 0 = cu[0] <= ...
      <= cu[-1] = seqlen): also return each sequence's state after its last step,
      (num_seqs, heads, headdim, d_state) in x's dtype (as the peer), h at step cu[i+1] - 1;
      an empty sequence's state is zero. Returned without gradient: the peer's backward refuses
      them; out and final_states still differentiate. They are computed after the scan from
      the state entering the block of each sequence's last step (varlen_states): the kernels'
      checkpoints, which hold it rounded to x's dtype, as the peer's chunk states do.
      cu_seqlens must mark the sequences seq_idx marks (one sequence when seq_idx is None):
      the peer mixes neighbouring sequences' states otherwise. Without return_varlen_states,
      cu_seqlens is ignored (as in the peer) beyond its type checks.
    Returns out, (out, final_states), (out, varlen_states) or (out, final_states,
    varlen_states), the peer's order.

seq_idx's order and cu_seqlens' values are checked with one small device-to-host copy (skipped
while torch.compile traces). Deliberate differences from the peer: a decreasing seq_idx and
cu_seqlens that disagree with seq_idx raise instead of giving chunk-dependent results, and the
first sequence's varlen state includes initial_states whenever its seq_idx is 0 (the peer drops
them when that sequence ends inside the first chunk).

Accepted dtypes: x, B, C, z share one dtype, float32 / float16 / bfloat16 (out has it too); dt
is in x's dtype or float32; A, D, dt_bias and initial_states may be any of the three (read as
float32, exactly). final_states are float32. chunk_size is any positive int (the peer does not
ask for a power of two either).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import ssd_kernels  # registers the custom ops ssmgen::ssd_fwd / ssd_bwd
from .inputs import _check_tensor, check_cu_seqlens_form
from .spec import MAX_D_STATE

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("triton", "cuda", "torch", "reference")
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
    seq_idx: Optional[torch.Tensor]
    cu_seqlens: Optional[torch.Tensor]  # int64, only with return_varlen_states
    return_varlen_states: bool
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
               return_final_states=False, return_varlen_states=False,
               check_values=True) -> SSDCall:
    """normalize_ssd; chunk_size=None is allowed here (the reference has no chunks).
    check_values=False leaves out the device-to-host check of seq_idx and cu_seqlens (the
    custom ops rebuild a call that the public entry point has checked already)."""
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
    if seq_idx is not None:
        _check_tensor("seq_idx", seq_idx)
        _shape("seq_idx", seq_idx, (batch, L), "(batch, seqlen)")
        if seq_idx.dtype != torch.int32:
            raise TypeError(f"seq_idx must be int32, got {seq_idx.dtype}")
    if cu_seqlens is not None:
        check_cu_seqlens_form(cu_seqlens)
    for name, t in (("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("dt_bias", dt_bias), ("initial_states", initial_states),
                    ("seq_idx", seq_idx), ("cu_seqlens", cu_seqlens)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but x is on {device}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not isinstance(dt_softplus, bool):
        raise TypeError(f"dt_softplus must be a bool, got {dt_softplus!r}")
    for name, v in (("return_final_states", return_final_states),
                    ("return_varlen_states", return_varlen_states)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {v!r}")
    if return_varlen_states:
        if cu_seqlens is None:
            raise ValueError("return_varlen_states=True needs cu_seqlens (num_seqs + 1,), the "
                             "packed sequences' boundaries")
        if batch != 1:
            raise ValueError(f"return_varlen_states needs packed inputs with batch = 1 (as in "
                             f"mamba-ssm), got batch={batch}")
    else:
        cu_seqlens = None  # the peer ignores it then too
    try:
        lo, hi = dt_limit
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi))
    except (TypeError, ValueError):
        ok = False
    if not ok or math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"dt_limit must be a pair of numbers (low, high) with low <= high, got "
                         f"{dt_limit!r}")
    if check_values and not torch.compiler.is_compiling():
        _check_packing(seq_idx, cu_seqlens, L)
    return SSDCall(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                   initial_states=initial_states, chunk_size=chunk_size,
                   dt_softplus=dt_softplus, dt_limit=(float(lo), float(hi)),
                   return_final_states=return_final_states, seq_idx=seq_idx,
                   cu_seqlens=None if cu_seqlens is None else cu_seqlens.to(torch.int64),
                   return_varlen_states=return_varlen_states, batch=batch, seqlen=L, heads=H,
                   headdim=P, groups=G, d_state=N)


def _check_packing(seq_idx, cu, L):
    """seq_idx never decreases along L; cu_seqlens runs from 0 to L, never decreasing, and a
    sequence starts at step t (0 < t < L) in it exactly where seq_idx changes (nowhere without
    seq_idx). All flags are computed on the device and copied to the host once."""
    if seq_idx is None and cu is None:
        return
    flags = []
    if seq_idx is not None:
        flags.append((seq_idx[:, 1:] < seq_idx[:, :-1]).any())
    if cu is not None:
        starts = torch.zeros(L + 1, dtype=torch.bool, device=cu.device)
        starts[cu.to(torch.int64).clamp(0, L)] = True  # meaningful once the values pass
        changes = (seq_idx[0, 1:] != seq_idx[0, :-1] if seq_idx is not None
                   else torch.zeros(L - 1, dtype=torch.bool, device=cu.device))
        flags.append((starts[1:L] != changes).any())
        flags.append(cu.to(torch.int64))
    host = torch.cat([f.reshape(-1).to(torch.int64) for f in flags]).tolist()
    if seq_idx is not None:
        if host.pop(0):
            raise ValueError("seq_idx must never decrease along seqlen (packed sequences lie one "
                             "after another)")
    if cu is None:
        return
    disagree, v = host[0], host[1:]
    if v[0] != 0 or v[-1] != L or any(b < a for a, b in zip(v, v[1:])):
        raise ValueError(f"cu_seqlens must start at 0, never decrease and end at L={L}; got "
                         f"{v if len(v) <= 12 else v[:6] + ['...'] + v[-6:]}")
    if disagree:
        raise ValueError("cu_seqlens must mark the sequences seq_idx marks (a sequence starts "
                         "where seq_idx changes" + ("" if seq_idx is not None else
                                                   "; without seq_idx there is one sequence")
                         + f"); got cu_seqlens "
                         f"{v if len(v) <= 12 else v[:6] + ['...'] + v[-6:]}")


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


def _returns(c: SSDCall, out, final, varlen):
    """The peer's return order: out[, final_states][, varlen_states]."""
    res = (out,) + ((final,) if c.return_final_states else ()) + \
        ((varlen,) if c.return_varlen_states else ())
    return res if len(res) > 1 else out


def _ref(c: SSDCall):
    """(out, final state, varlen states or None), float64."""
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
    seq = None if c.seq_idx is None else c.seq_idx.to(torch.int64)
    prev = torch.zeros(c.batch, dtype=torch.int64, device=x.device)  # s_{-1} = 0
    ends, varlen = {}, []  # ends: step -> the sequences that end there (batch row 0)
    if c.return_varlen_states:
        cu = c.cu_seqlens.tolist()
        varlen = [h.new_zeros(c.heads, c.headdim, c.d_state)] * (len(cu) - 1)  # empty: zero
        for i, (a, b) in enumerate(zip(cu, cu[1:])):
            if b > a:
                ends.setdefault(b - 1, []).append(i)
    ys = []
    for t in range(c.seqlen):
        decay = torch.exp(dt[:, t] * A)
        if seq is not None:  # a new sequence starts from zero: the old state is dropped
            decay = decay * (seq[:, t] == prev).to(f64)[:, None]
            prev = seq[:, t]
        h = decay[:, :, None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * \
            B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1))
        for i in ends.get(t, ()):
            varlen[i] = h[0]
    y = _finish(c, torch.stack(ys, dim=1), f64)
    return y, h, (torch.stack(varlen) if c.return_varlen_states else None)


def ssd_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
            cu_seqlens=None, dt_softplus=False, dt_limit=DEFAULT_DT_LIMIT,
            return_final_states=False, return_varlen_states=False):
    """The specification: the recurrence step by step in float64. Returns out, with
    final_states and varlen_states as asked (mamba_chunk_scan_combined's order), all float64;
    differentiable in every input."""
    c = _normalize(x, dt, A, B, C, None, D=D, z=z, dt_bias=dt_bias,
                   initial_states=initial_states, seq_idx=seq_idx, cu_seqlens=cu_seqlens,
                   dt_softplus=dt_softplus, dt_limit=dt_limit,
                   return_final_states=return_final_states,
                   return_varlen_states=return_varlen_states)
    return _returns(c, *_ref(c))


def varlen_states(c: SSDCall, h_in: torch.Tensor, Q: int) -> torch.Tensor:
    """Each packed sequence's state after its last step, (num_seqs, heads, headdim, d_state)
    fp32, from h_in (ceil(L / Q), heads, headdim, d_state): the state entering each block of Q
    steps of batch row 0 (block k: steps kQ .. kQ + Q - 1). For a sequence whose last step e
    lies in block k (s: seq_idx, s_{-1} = 0; dA_t = dt'_t A):
        h_e = [s_e == s_{kQ-1}] exp(dA_{kQ..e}) h_in[k]
              + sum_{kQ <= j <= e, s_j == s_e} exp(dA_{j+1..e}) dt'_j x_j B_j^T
    An empty sequence's state is zero. Not differentiable by design (callers run it under
    no_grad or detach): the peer gives these states no gradient."""
    f32, dev = torch.float32, c.x.device
    L, H, P, N, G = c.seqlen, c.heads, c.headdim, c.d_state, c.groups
    r = H // G
    cu = c.cu_seqlens
    empty = cu[1:] == cu[:-1]
    last = (cu[1:] - 1).clamp(min=0)  # an empty first sequence would give -1
    dtp = _dt(c, f32)[0]  # (L, H)
    dA = dtp * c.A.to(f32)
    seq = None if c.seq_idx is None else c.seq_idx[0].to(torch.int64)
    out = []
    # the windows of many short sequences would gather up to Q times x: take them in groups of
    # about L / Q sequences, so that each group gathers about one x
    step = max(1, -(-L // Q))
    for i in range(0, last.numel(), step):
        e = last[i:i + step]  # (S,)
        k0 = e // Q * Q
        j = k0[:, None] + torch.arange(Q, device=dev)  # (S, Q) the window of e's block
        mine = j <= e[:, None]
        jc = j.clamp(max=L - 1)
        carry = torch.ones_like(e, dtype=torch.bool)
        if seq is not None:
            mine = mine & (seq[jc] == seq[e][:, None])
            before = torch.where(k0 > 0, seq[(k0 - 1).clamp(min=0)], 0)
            carry = before == seq[e]
        a = dA[jc] * (j <= e[:, None])[..., None]  # (S, Q, H): steps past e do not decay
        after = F.pad(a[:, 1:], (0, 0, 0, 1)).flip(1).cumsum(1).flip(1)  # dA_{j+1..e}
        w = torch.exp(after) * dtp[jc] * mine[..., None]  # (S, Q, H)
        xw = (c.x[0, jc].to(f32) * w[..., None]).reshape(*j.shape, G, r, P)
        h = torch.einsum("sqgrp,sqgn->sgrpn", xw, c.B[0, jc].to(f32)).reshape(-1, H, P, N)
        enter = (carry[:, None] * torch.exp(a.sum(1)))[..., None, None]
        out.append(h + enter * h_in[e // Q].to(f32))
    return torch.cat(out).masked_fill(empty[:, None, None, None], 0.0)


def segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): out[i, j] = a[j+1] + ... + a[i] for i >= j, -inf above the
    diagonal. Sums of the terms themselves, not differences of cumulative sums, so that a long
    prefix does not cost precision (exp of it is the decay from step j to step i)."""
    T = a.shape[-1]
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    s = a[..., :, None].expand(*a.shape, T).masked_fill(~strict, 0.0).cumsum(dim=-2)
    return s.masked_fill(~torch.ones_like(strict).tril(), -math.inf)


def _chunked(c: SSDCall):
    """(out, final state, varlen states or None), float32."""
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
    seq = None
    if c.seq_idx is not None:  # padded steps continue the last sequence
        seq = c.seq_idx.to(torch.int64)
        seq = torch.cat([seq, seq[:, -1:].expand(b, pad)], 1).reshape(b, nc, Q)
        # the sequence of each chunk's last step, after s_{-1} = 0 (the initial state's)
        ends = F.pad(seq[:, :, -1], (1, 0))  # (b, nc + 1)
    # 1. within a chunk, the quadratic form: y_l = sum_{s<=l} (C_l . B_s) exp(dA_{s+1..l}) dt_s x_s
    decay = torch.exp(segsum(dA.permute(0, 1, 3, 4, 2)))  # (b, nc, G, r, Q_l, Q_s)
    if seq is not None:  # ... over the steps s of l's own sequence
        decay = decay.masked_fill((seq[:, :, :, None] != seq[:, :, None, :])[:, :, None, None],
                                  0.0)
    CB = torch.einsum("bclgn,bcsgn->bcgls", C, B)
    y = torch.einsum("bcgrls,bcsgrp->bclgrp", CB[:, :, :, None] * decay, xdt)
    # 2. each chunk's own end state: sum_s exp(dA_{s+1..end}) dt_s x_s B_s^T
    after = F.pad(dA[:, :, 1:], (0, 0, 0, 0, 0, 1)).flip(2).cumsum(2).flip(2)  # dA_{s+1..end}
    tail = torch.exp(after)
    if seq is not None:  # ... over the steps of the sequence the chunk ends in
        tail = tail.masked_fill((seq != seq[:, :, -1:])[..., None, None], 0.0)
    states = torch.einsum("bcsgn,bcsgrp->bcgrpn", B, xdt * tail[..., None])
    # 3. across chunks: the state entering each chunk, and the final one, as one matmul with
    #    the chunk-to-chunk decays: h_in[i] = sum_{j<=i} exp(total_{j+1..i}) [h0, states][j]
    if c.initial_states is not None:
        h0 = c.initial_states.to(f32).reshape(b, 1, G, r, P, N)
    else:
        h0 = states.new_zeros(b, 1, G, r, P, N)
    total = F.pad(dA.sum(2).permute(0, 2, 3, 1), (1, 0))  # (b, G, r, nc + 1)
    carry = torch.exp(segsum(total))
    if seq is not None:  # j's state reaches chunk i only if no sequence starts in j+1 .. i
        carry = carry.masked_fill((ends[:, :, None] != ends[:, None, :])[:, None, None], 0.0)
    h = torch.einsum("bgrij,bjgrpn->bigrpn", carry, torch.cat([h0, states], dim=1))
    h_in, final = h[:, :-1], h[:, -1]
    # 4. the entering state's contribution: exp(dA_{0..l}) C_l h_in
    enter = torch.exp(dA.cumsum(2))
    if seq is not None:  # ... to the steps still in the sequence the state belongs to
        enter = enter.masked_fill((seq != ends[:, :-1, None])[..., None, None], 0.0)
    y = y + torch.einsum("bclgn,bcgrpn->bclgrp", C, h_in) * enter[..., None]
    y = _finish(c, y.reshape(b, nc * Q, H, P)[:, :L], f32)
    varlen = None
    if c.return_varlen_states:
        varlen = varlen_states(c, h_in[0].reshape(nc, H, P, N), Q)
    return y, final.reshape(b, H, P, N), varlen


def ssd_chunked(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=DEFAULT_DT_LIMIT,
                return_final_states=False, return_varlen_states=False):
    """The chunked algorithm in fp32 PyTorch. Returns out, with final_states and varlen_states
    as asked (mamba_chunk_scan_combined's order), all float32; autograd gives the backward
    (of out and final_states; varlen_states are computed as they come, without detaching)."""
    c = normalize_ssd(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                      initial_states=initial_states, seq_idx=seq_idx, cu_seqlens=cu_seqlens,
                      dt_softplus=dt_softplus, dt_limit=dt_limit,
                      return_final_states=return_final_states,
                      return_varlen_states=return_varlen_states)
    return _returns(c, *_chunked(c))


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                              initial_states=None, seq_idx=None, cu_seqlens=None,
                              dt_softplus=False, dt_limit=DEFAULT_DT_LIMIT,
                              return_final_states=False, return_varlen_states=False, *,
                              backend=None, config=None):
    """Drop-in for mamba-ssm's mamba_chunk_scan_combined.

    x, z: (batch, seqlen, heads, headdim); dt: (batch, seqlen, heads); A, dt_bias: (heads,);
    B, C: (batch, seqlen, groups, d_state), groups dividing heads; D: (heads, headdim) or
    (heads,); initial_states: (batch, heads, headdim, d_state); seq_idx: (batch, seqlen) int32;
    cu_seqlens: (num_seqs + 1,) int, read with return_varlen_states (see the module docstring).
    Returns out (x's dtype), then final_states (float32) and varlen_states (x's dtype, no
    gradient) when asked for. backend: "triton" (generated kernels; the default on CUDA
    tensors; on CPU tensors only under TRITON_INTERPRET=1), "cuda" (generated CUDA kernels, CUDA
    tensors), "torch" (the chunked algorithm in PyTorch; the default on CPU tensors) or
    "reference" (the float64 loop). config: the kernels' config, SSDConfig (Triton) or
    CudaSSDConfig (CUDA), or a dict of its fields; None: the default for the variant."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    c = normalize_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                      cu_seqlens, dt_softplus, dt_limit, return_final_states, return_varlen_states)
    if backend is None:
        backend = "triton" if x.is_cuda else "torch"
    if config is not None and backend not in ("triton", "cuda"):
        raise ValueError(f"config applies to backend='triton' or 'cuda' only, got "
                         f"backend={backend!r}")
    if backend in ("triton", "cuda"):
        ssd_kernels.check_device(x, backend)
        out, final, varlen = ssd_kernels.run(c, config, backend)
    else:
        out, final, varlen = _ref(c) if backend == "reference" else _chunked(c)
    return _returns(c, out.to(x.dtype), final.to(torch.float32),
                    None if varlen is None else varlen.detach().to(x.dtype))
