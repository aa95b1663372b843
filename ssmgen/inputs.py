"""Validation and canonical forms of a selective_scan call, shared by every backend.

All checks happen here, before anything is rendered or launched; each error names the argument
and what was expected. The canonical forms are what kernels read:
  u, delta, z       (batch, dim, L), last stride 1 (copied if not)
  A                 (dim, N) float32, or complex64
  B, C variable     (batch, groups, N, L) real; complex as interleaved real (batch, groups, N, 2L)
  B, C constant     (dim, N) float32, or complex64
  D, delta_bias     (dim,) float32
  initial_state     (batch, dim, N) float32, or complex64; (num_seqs, dim, N) with cu_seqlens
  cu_seqlens        (num_seqs + 1,) int64, 0 = cu_seqlens[0] <= ... <= cu_seqlens[-1] = L
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from .spec import MAX_D_STATE, ScanSpec

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
DEFAULT_CHUNK_LEN = 256


@dataclass
class Call:
    """A validated call: the spec plus canonical tensors and sizes."""

    spec: ScanSpec
    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: Optional[torch.Tensor]
    z: Optional[torch.Tensor]
    delta_bias: Optional[torch.Tensor]
    batch: int
    dim: int
    seqlen: int
    groups_B: int
    groups_C: int
    B_squeezed: bool  # B was given as (batch, N, L): its gradient goes back in that shape
    C_squeezed: bool
    B_was_complex: bool  # complex tensor given (not interleaved real): gradient is complex too
    C_was_complex: bool
    initial_state: Optional[torch.Tensor] = None
    cu_seqlens: Optional[torch.Tensor] = None

    @property
    def num_states(self) -> int:
        """Rows of the last state: one per sequence (varlen) or per batch row."""
        return self.cu_seqlens.numel() - 1 if self.cu_seqlens is not None else self.batch

    def with_chunk_len(self, chunk_len: int) -> "Call":
        """The same call with another checkpoint interval (no re-validation of the tensors)."""
        if chunk_len == self.spec.chunk_len:
            return self
        return dataclasses.replace(self, spec=self.spec.replace(chunk_len=chunk_len))


def _last_contig(x: torch.Tensor) -> torch.Tensor:
    # Kernels read along L with unit stride; other strides are passed through. Same rule as mamba-ssm.
    x = _resolved(x)
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    # sparse, mkldnn or nested tensors: the kernels read dense strided memory
    if x.layout != torch.strided or x.is_nested:
        kind = "a nested tensor" if x.is_nested else f"layout {x.layout}"
        raise TypeError(f"{name} must be a dense (strided) tensor, got {kind}")


def _resolved(x: torch.Tensor) -> torch.Tensor:
    """A lazily conjugated / negated view (x.conj(), c.conj().imag) as plain values: the kernels
    read memory, and view_as_real refuses such views."""
    return x.resolve_conj().resolve_neg()


def _norm_bc(name, X, spec_complex, batch, dim, N, L, udtype):
    """Returns (canonical tensor, layout, groups, squeezed, was_complex)."""
    _check_tensor(name, X)
    if X.dim() == 2:
        if tuple(X.shape) != (dim, N):
            raise ValueError(f"{name}: constant {name} must have shape (dim, d_state) = {(dim, N)}, "
                             f"got {tuple(X.shape)}")
        want = torch.complex64 if spec_complex else torch.float32
        if X.dtype != want:
            raise TypeError(f"{name}: constant {name} must be {want} (like A), got {X.dtype}")
        return _resolved(X).contiguous(), "constant", 1, False, spec_complex
    if X.dim() not in (3, 4):
        raise ValueError(f"{name} must have shape (dim, d_state), (batch, d_state, L) or "
                         f"(batch, groups, d_state, L); got {X.dim()} dims {tuple(X.shape)}")
    squeezed = X.dim() == 3
    if squeezed:
        X = X.unsqueeze(1)
    b, g, n, l = X.shape
    if b != batch or n != N:
        raise ValueError(f"{name}: variable {name} must be (batch={batch}, groups, d_state={N}, L), "
                         f"got {tuple(X.shape if not squeezed else X.squeeze(1).shape)}")
    if g < 1 or dim % g != 0:
        raise ValueError(f"{name}: groups={g} must divide dim={dim}")
    was_complex = X.is_complex()
    if was_complex:
        if not spec_complex:
            raise TypeError(f"{name} is complex but A is real: complex B/C need a complex A")
        if X.dtype != torch.complex64 or udtype != torch.float32:
            raise TypeError(f"{name}: a complex tensor {name} must be complex64 with float32 u; for "
                            f"{udtype} u pass the interleaved real form (batch, groups, d_state, 2L)")
        if l != L:
            raise ValueError(f"{name}: complex {name} must have L={L} timesteps, got {l}")
        X = torch.view_as_real(_last_contig(X))
        X = X.reshape(b, g, n, 2 * L)  # a view: (re, im) pairs are adjacent
        return X, "variable", g, squeezed, True
    if X.dtype != udtype:
        raise TypeError(f"{name}: variable {name} must have u's dtype {udtype}, got {X.dtype}")
    want_l = 2 * L if spec_complex else L
    if l != want_l:
        form = "interleaved (re, im) length 2L" if spec_complex else "length L"
        raise ValueError(f"{name}: variable {name} must have {form} = {want_l} along the last dim, "
                         f"got {l}")
    return _last_contig(X), "variable", g, squeezed, False


def _norm_vec(name, x, dim, device):
    if x is None:
        return None
    _check_tensor(name, x)
    if x.dim() != 1 or x.shape[0] != dim:
        raise ValueError(f"{name} must have shape (dim,) = ({dim},), got {tuple(x.shape)}")
    if x.dtype not in _DTYPE_NAMES:
        raise TypeError(f"{name} must be float32 (or a half type, cast exactly), got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but u is on {device}")
    return _resolved(x).float().contiguous()


def _norm_initial(h0, batch, dim, N, cplx, device, cu):
    """cu: the normalized cu_seqlens or None; packed sequences take one initial state each."""
    if h0 is None:
        return None
    _check_tensor("initial_state", h0)
    if cu is not None and tuple(h0.shape) != (cu.numel() - 1, dim, N):
        raise ValueError(f"initial_state with cu_seqlens must have shape (num_seqs, dim, d_state) "
                         f"= {(cu.numel() - 1, dim, N)} (one state per packed sequence), got "
                         f"{tuple(h0.shape)}")
    if cu is None and tuple(h0.shape) != (batch, dim, N):
        raise ValueError(f"initial_state must have shape (batch, dim, d_state) = {(batch, dim, N)}, "
                         f"got {tuple(h0.shape)}")
    want = torch.complex64 if cplx else torch.float32
    if h0.dtype != want:
        raise TypeError(f"initial_state must be {want} (the state's dtype for "
                        f"{'complex' if cplx else 'real'} A), got {h0.dtype}")
    if h0.device != device:
        raise ValueError(f"initial_state is on {h0.device} but u is on {device}")
    return _resolved(h0).contiguous()


def check_cu_seqlens_form(cu) -> None:
    """cu_seqlens' type, rank, length and dtype (shared by the scan and the SSD)."""
    _check_tensor("cu_seqlens", cu)
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with num_seqs + 1 >= 2 entries, got shape "
                         f"{tuple(cu.shape)}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64, got {cu.dtype}")


def _norm_cu_seqlens(cu, batch, L, device, check_values):
    if cu is None:
        return None
    check_cu_seqlens_form(cu)
    if cu.device != device:
        raise ValueError(f"cu_seqlens is on {cu.device} but u is on {device}")
    if batch != 1:
        raise ValueError(f"cu_seqlens needs packed inputs with batch = 1 (u: (1, dim, total_L)), "
                         f"got batch={batch}")
    if check_values and not torch.compiler.is_compiling():  # one small device-to-host copy
        v = cu.tolist()
        if v[0] != 0 or v[-1] != L or any(b < a for a, b in zip(v, v[1:])):
            raise ValueError(f"cu_seqlens must start at 0, never decrease and end at L={L}; got "
                             f"{v if len(v) <= 12 else v[:6] + ['...'] + v[-6:]}")
    return cu.to(torch.int64).contiguous()


def normalize(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
              return_last_state=False, chunk_len=None, *, initial_state=None, cu_seqlens=None,
              reverse=False, check_values=True) -> Call:
    """check_values=False skips the one check that reads tensor values (cu_seqlens, a device
    sync): for the custom ops, whose inputs the public call has already checked."""
    for name, x in (("u", u), ("delta", delta), ("A", A)):
        _check_tensor(name, x)
    if u.dtype not in _DTYPE_NAMES:
        raise TypeError(f"u must be float32, float16 or bfloat16, got {u.dtype}")
    if u.dim() != 3:
        raise ValueError(f"u must have shape (batch, dim, L), got {tuple(u.shape)}")
    batch, dim, L = u.shape
    if min(batch, dim, L) == 0:
        raise ValueError(f"u must be non-empty (batch, dim, L all >= 1), got {tuple(u.shape)}")
    device = u.device
    if tuple(delta.shape) != tuple(u.shape):
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if delta.dtype != u.dtype:
        raise TypeError(f"delta must have u's dtype {u.dtype}, got {delta.dtype}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim={dim}, d_state), got {tuple(A.shape)}")
    N = A.shape[1]
    if not 1 <= N <= MAX_D_STATE:
        raise ValueError(f"A: d_state must be in 1..{MAX_D_STATE}, got {N}")
    if A.dtype not in (torch.float32, torch.complex64):
        raise TypeError(f"A must be float32 (real) or complex64 (complex), got {A.dtype}")
    is_cplx = A.dtype == torch.complex64
    if z is not None:
        _check_tensor("z", z)
        if tuple(z.shape) != tuple(u.shape):
            raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
        if z.dtype != u.dtype:
            raise TypeError(f"z must have u's dtype {u.dtype}, got {z.dtype}")
    for name, x in (("delta", delta), ("A", A), ("B", B), ("C", C), ("z", z)):
        if isinstance(x, torch.Tensor) and x.device != device:
            raise ValueError(f"{name} is on {x.device} but u is on {device}")
    Bn, b_layout, gB, b_sq, b_cx = _norm_bc("B", B, is_cplx, batch, dim, N, L, u.dtype)
    Cn, c_layout, gC, c_sq, c_cx = _norm_bc("C", C, is_cplx, batch, dim, N, L, u.dtype)
    if not isinstance(delta_softplus, bool) or not isinstance(return_last_state, bool):
        raise TypeError("delta_softplus and return_last_state must be bools")
    if not isinstance(reverse, bool):
        raise TypeError(f"reverse must be a bool, got {reverse!r}")
    cu = _norm_cu_seqlens(cu_seqlens, batch, L, device, check_values)
    h0 = _norm_initial(initial_state, batch, dim, N, is_cplx, device, cu)
    spec = ScanSpec(d_state=int(N), dtype=_DTYPE_NAMES[u.dtype], complex_A=is_cplx,
                    B_layout=b_layout, C_layout=c_layout, has_D=D is not None,
                    has_z=z is not None, has_delta_bias=delta_bias is not None,
                    delta_softplus=delta_softplus, return_last_state=return_last_state,
                    chunk_len=DEFAULT_CHUNK_LEN if chunk_len is None else chunk_len,
                    has_initial_state=h0 is not None, reverse=reverse, varlen=cu is not None)
    return Call(spec=spec, u=_last_contig(u), delta=_last_contig(delta),
                A=_resolved(A).contiguous(), B=Bn, C=Cn, D=_norm_vec("D", D, dim, device),
                z=None if z is None else _last_contig(z),
                delta_bias=_norm_vec("delta_bias", delta_bias, dim, device),
                batch=batch, dim=dim, seqlen=L, groups_B=gB, groups_C=gC,
                B_squeezed=b_sq, C_squeezed=c_sq, B_was_complex=b_cx, C_was_complex=c_cx,
                initial_state=h0, cu_seqlens=cu)
