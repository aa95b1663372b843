"""The decode step: one token's state update in place, from the same ScanSpec as the scan.

    dt' = softplus(dt + dt_bias)                       (each part optional)
    state <- exp(dt' A) * state + dt' B x              (fp32 state; complex64 for complex A)
    out   = sum_n state C  (complex A: 2 Re)  (+ D x) (* silu(z))

Drop-in for mamba-ssm's `selective_state_update` (same arguments, shapes and in-place update):
Mamba-1 shapes (state (batch, dim, N), x (batch, dim), A (dim, N), B/C (batch, N)) or
Mamba-2 shapes with heads (state (batch, heads, headdim, N), x (batch, heads, headdim),
A (heads, headdim, N), B/C (batch, groups, N), D / dt_bias (heads, headdim)); A, dt and dt_bias
may be broadcast with zero strides (Mamba-2's scalar A per head). state_batch_indices (batch,)
picks each row's state from a pool: a negative index is a padding slot (output 0, no state
touched); an index past the pool gives NaN outputs and leaves the pool alone (checking it on
the host would cost a device sync on every step).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import plans
from .inputs import _DTYPE_NAMES, _check_tensor, _resolved
from .spec import MAX_D_STATE, ScanSpec


@dataclass
class StepCall:
    spec: ScanSpec
    state: torch.Tensor     # (pool, H, P, N[, 2]) fp32 view of the caller's state (in place)
    x: torch.Tensor         # (batch, H, P)
    dt: torch.Tensor
    A: torch.Tensor         # (H, P, N[, 2]) fp32 view, any strides
    B: torch.Tensor         # (batch, G, N[, 2]) in x's dtype (complex: (re, im) pairs)
    C: torch.Tensor
    D: Optional[torch.Tensor]        # (H, P) fp32
    z: Optional[torch.Tensor]        # (batch, H, P)
    dt_bias: Optional[torch.Tensor]  # (H, P) fp32
    indices: Optional[torch.Tensor]  # (batch,) int64
    batch: int
    heads: int
    headdim: int
    groups: int
    has_heads: bool


def _heads(name, t, want_dims):
    """Adds the heads axis (dim 1) to a Mamba-1 shaped state / x / dt / z."""
    if t is None:
        return None
    _check_tensor(name, t)
    if t.dim() == want_dims - 1:
        return t.unsqueeze(1)
    if t.dim() != want_dims:
        raise ValueError(f"{name} must have {want_dims - 1} or {want_dims} dims, got shape "
                         f"{tuple(t.shape)}")
    return t


def _bc(name, X, batch, N, cplx, xdtype):
    _check_tensor(name, X)
    if X.dim() == 2:
        X = X.unsqueeze(1)
    if X.dim() != 3 or X.shape[0] != batch:
        raise ValueError(f"{name} must have shape (batch={batch}, d_state) or (batch, groups, "
                         f"d_state), got {tuple(X.shape)}")
    if X.is_complex():
        if not cplx:
            raise TypeError(f"{name} is complex but A is real")
        if X.dtype != torch.complex64 or xdtype != torch.float32:
            raise TypeError(f"{name}: a complex {name} must be complex64 with float32 x; for "
                            f"{xdtype} x pass the interleaved real form (batch, groups, 2*d_state)")
        if X.shape[2] != N:
            raise ValueError(f"{name}: complex {name} must have d_state={N} entries, got {X.shape[2]}")
        return torch.view_as_real(_resolved(X))  # a lazily conjugated view is fine
    if X.dtype != xdtype:
        raise TypeError(f"{name} must have x's dtype {xdtype}, got {X.dtype}")
    want = 2 * N if cplx else N
    if X.shape[2] != want:
        raise ValueError(f"{name} must have {'2*d_state (interleaved re, im)' if cplx else 'd_state'}"
                         f" = {want} entries in its last dim, got {X.shape[2]}")
    return X.unflatten(2, (N, 2)) if cplx else X


def _param(name, t, H, P, device):
    if t is None:
        return None
    _check_tensor(name, t)
    t = t.unsqueeze(0) if t.dim() == 1 else t
    if tuple(t.shape) != (H, P):
        raise ValueError(f"{name} must have shape (dim,) or (heads, headdim) = {(H, P)}, got "
                         f"{tuple(t.shape)}")
    if t.dtype not in _DTYPE_NAMES:
        raise TypeError(f"{name} must be float32 (or a half type, cast exactly), got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but x is on {device}")
    return t.float().contiguous()


def normalize_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                   state_batch_indices=None) -> StepCall:
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A)):
        _check_tensor(name, t)
    has_heads = state.dim() == 4
    st, xx, tt = _heads("state", state, 4), _heads("x", x, 3), _heads("dt", dt, 3)
    AA = A.unsqueeze(0) if A.dim() == 2 else A
    if AA.dim() != 3:
        raise ValueError(f"A must be (dim, d_state) or (heads, headdim, d_state), got "
                         f"{tuple(A.shape)}")
    if x.dtype not in _DTYPE_NAMES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    batch, H, P = xx.shape
    if min(batch, H, P) == 0:
        raise ValueError(f"x must be non-empty, got shape {tuple(x.shape)}")
    device = x.device
    pool, sH, sP, N = st.shape
    if (sH, sP) != (H, P):
        raise ValueError(f"state must be (batch, dim, d_state) or (batch, heads, headdim, "
                         f"d_state) matching x {tuple(x.shape)}, got {tuple(state.shape)}")
    if not 1 <= N <= MAX_D_STATE:
        raise ValueError(f"state: d_state must be in 1..{MAX_D_STATE}, got {N}")
    if tuple(AA.shape) != (H, P, N):
        raise ValueError(f"A must have shape {(H, P, N) if has_heads else (P, N)}, got "
                         f"{tuple(A.shape)}")
    cplx = AA.dtype == torch.complex64
    if AA.dtype not in (torch.float32, torch.complex64):
        raise TypeError(f"A must be float32 (real) or complex64 (complex), got {A.dtype}")
    want = torch.complex64 if cplx else torch.float32
    if st.dtype != want:
        raise TypeError(f"state must be {want} (the fp32 state for {'complex' if cplx else 'real'}"
                        f" A), got {state.dtype}")
    if st.stride(-1) != 1:
        raise ValueError("state must have unit stride along d_state: it is updated in place, so "
                         "it cannot be copied into a layout the kernels read")
    if state.is_conj() or torch._debug_has_internal_overlap(state) == 1:
        raise ValueError("state must be a writable tensor whose elements do not share memory (an "
                         "expanded or lazily conjugated view cannot be updated in place)")
    zz = _heads("z", z, 3)
    for name, t, user in (("dt", tt, dt), ("z", zz, z)):
        if t is not None and (tuple(t.shape) != (batch, H, P) or t.dtype != x.dtype):
            raise ValueError(f"{name} must have x's shape {tuple(x.shape)} and dtype {x.dtype}, "
                             f"got {tuple(user.shape)} {user.dtype}")
    for name, t in (("state", state), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D),
                    ("z", z), ("dt_bias", dt_bias), ("state_batch_indices", state_batch_indices)):
        if isinstance(t, torch.Tensor) and t.device != device:
            raise ValueError(f"{name} is on {t.device} but x is on {device}")
    Bn = _bc("B", B, batch, N, cplx, x.dtype)
    Cn = _bc("C", C, batch, N, cplx, x.dtype)
    if Bn.shape[1] != Cn.shape[1]:
        raise ValueError(f"B and C must have the same groups, got {Bn.shape[1]} and {Cn.shape[1]}")
    G = Bn.shape[1]
    if H % G:
        raise ValueError(f"B/C groups={G} must divide heads={H}")
    idx = state_batch_indices
    if idx is not None:
        _check_tensor("state_batch_indices", idx)
        if tuple(idx.shape) != (batch,) or idx.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"state_batch_indices must be an int32/int64 tensor of shape "
                             f"(batch,) = ({batch},), got {tuple(idx.shape)} {idx.dtype}")
        idx = idx.to(torch.int64).contiguous()  # the kernels read it as contiguous
    elif pool != batch:
        raise ValueError(f"state has {pool} rows but x has batch={batch}: pass "
                         f"state_batch_indices to pick rows from a state pool")
    if not isinstance(dt_softplus, bool):
        raise TypeError(f"dt_softplus must be a bool, got {dt_softplus!r}")
    spec = ScanSpec(d_state=N, dtype=_DTYPE_NAMES[x.dtype], complex_A=cplx, has_D=D is not None,
                    has_z=z is not None, has_delta_bias=dt_bias is not None,
                    delta_softplus=dt_softplus, has_state_indices=idx is not None)
    real = torch.view_as_real
    return StepCall(spec=spec, state=real(st) if cplx else st, x=xx, dt=tt,
                    A=real(AA) if cplx else AA, B=Bn, C=Cn, D=_param("D", D, H, P, device),
                    z=zz, dt_bias=_param("dt_bias", dt_bias, H, P, device),
                    indices=idx, batch=batch, heads=H, headdim=P, groups=G, has_heads=has_heads)


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False, state_batch_indices=None):
    """float64 reference; returns (out, new state rows) and leaves `state` untouched. new state
    rows: (batch, H, P, N) (the rows the step writes; padding slots keep their old value)."""
    c = normalize_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    cplx = c.spec.complex_A

    def cx(t):  # fp32 (.., 2) view -> complex128; real -> float64
        return torch.view_as_complex(t.double().contiguous()) if cplx else t.double()

    rows = c.indices if c.indices is not None else torch.arange(c.batch, device=x.device)
    pool = c.state.shape[0]
    pad, past = rows < 0, rows >= pool  # padding slot; past the pool: NaN out, nothing written
    h = cx(c.state)[rows.clamp(0, pool - 1)]
    d = c.dt.double()
    if c.dt_bias is not None:
        d = d + c.dt_bias.double()
    if dt_softplus:
        d = F.softplus(d)
    rep = c.heads // c.groups
    Bx = cx(c.B).repeat_interleave(rep, dim=1)[:, :, None, :]
    Cx = cx(c.C).repeat_interleave(rep, dim=1)[:, :, None, :]
    h_new = torch.exp(d[..., None] * cx(c.A)) * h + (d * c.x.double())[..., None] * Bx
    h_new = torch.where((pad | past)[:, None, None, None], h, h_new)
    y = (h_new * Cx).sum(-1)
    y = 2 * y.real if cplx else y
    if c.D is not None:
        y = y + c.D.double() * c.x.double()
    if c.z is not None:
        y = y * F.silu(c.z.double())
    y = torch.where(pad[:, None, None], torch.zeros_like(y), y)
    y = torch.where(past[:, None, None], torch.full_like(y, float("nan")), y)
    if not c.has_heads:
        y, h_new = y.squeeze(1), h_new.squeeze(1)
    return y, h_new


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, state_batch_indices=None, *, backend=None,
                           config=None):
    """Updates `state` in place and returns out (x's shape and dtype). backend: "cuda",
    "triton", "reference" or None (Triton on CUDA tensors, the faster step there; else as for
    selective_scan); config: a dict of the backend's
    step kernel fields (Triton: block_d, num_warps; CUDA: threads, lpc), None = tuned record
    or default."""
    from .ops import pick_backend

    raw = (state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    if config is None and plans.enabled():
        out = _plans.run_fast((backend, dt_softplus), raw)
        if out is not None:
            return out
    key = (plans.signature((backend, dt_softplus), raw) if config is None and plans.enabled()
           else None)
    plan = _plans.get(key) if key is not None else None
    if plan is not None:
        return plan.run(raw, key[:2])
    call = normalize_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                          state_batch_indices)
    # on a GPU the Triton step by default: measured 8.1 us vs the CUDA step's 21.4 us per call
    # in a CUDA graph (benchmarks/NOTES.md, "Decode step"); the scan keeps CUDA as default
    on_gpu = backend is None and x.device.type == "cuda"
    name = "triton" if on_gpu else pick_backend(backend, x.device)
    if name == "reference":
        y, h = selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                          state_batch_indices)
        rows = (call.indices if call.indices is not None
                else torch.arange(call.batch, device=x.device))
        keep = (rows >= 0) & (rows < call.state.shape[0])
        with torch.no_grad():
            state[rows[keep]] = h[keep].to(state.dtype)
        return y.to(x.dtype)
    from . import backends

    mod = backends.get(name)
    k = step_config(mod, call, config, name)
    out = mod.step(call, k).reshape(x.shape)
    if key is not None:
        plan = _Plan.make(mod, call, k, raw, x.shape)
        if plan is not None:
            _plans.put(key, plan)
    return out


# -- plans: a repeated step call is a dict lookup and one launch (the eager decode loop) ----------
_plans = plans.Table()
# the kernel's tensor parameters (buffers.step_params) that are the caller's tensors, by position
# in selective_state_update's arguments
_RAW = {"state": 0, "x": 1, "dt": 2, "A": 3, "B": 4, "C": 5, "D": 6, "z": 7, "dbias": 8,
        "idx": 9}


@dataclass
class _Plan:
    """The launch of one step signature: its kernel arguments with the caller's tensors left as
    slots (every integer is a size or stride, fixed by the signature)."""

    launch: object          # backend.step_launcher: values -> None
    values: list            # ints, and None at the slots
    slots: list             # (position in values, position in raw, read as view_as_real)
    out: int                # position of out in values
    out_shape: tuple
    x_shape: tuple
    fast_tried: bool = False

    @classmethod
    def make(cls, mod, call: StepCall, k, raw, x_shape):
        """None where normalize_step made a copy of a caller's tensor (a dtype or layout change:
        such a call keeps the full path, which makes the copy)."""
        from .backends import buffers

        out_shape = (call.batch, call.heads, call.headdim)
        a = buffers.step_args(call, torch.empty(out_shape, device="meta"))  # out's strides
        values, slots, out_at = [], [], None
        for i, (n, kind) in enumerate(buffers.step_params(call.spec)):
            v = a[n]
            if kind == "int":
                values.append(int(v))
                continue
            values.append(None)
            if n == "out":
                out_at = i
            elif v.data_ptr() != raw[_RAW[n]].data_ptr() or v.dtype != _view_dtype(raw[_RAW[n]]):
                return None
            else:
                slots.append((i, _RAW[n], raw[_RAW[n]].is_complex()))
        # spec and sizes only: a plan must not keep the caller's tensors alive
        bare = dataclasses.replace(call, state=None, x=None, dt=None, A=None, B=None, C=None,
                                   D=None, z=None, dt_bias=None, indices=None)
        launch = mod.step_launcher(bare, k, [i for i, _, _ in slots] + [out_at])
        return cls(launch, values, slots, out_at, out_shape, tuple(x_shape))

    def run(self, raw, flags):
        from .backends import buffers

        values = list(self.values)
        for i, j, cplx in self.slots:
            values[i] = torch.view_as_real(raw[j]) if cplx else raw[j]
        x = raw[1]
        out = buffers.new(self.out_shape, x.dtype, x.device)
        values[self.out] = out
        self.launch(values)
        if not self.fast_tried:  # the launcher has its kernel now: the C++ launch of it
            self._make_fast(raw, values, flags)
        return out.view(self.x_shape)

    def _make_fast(self, raw, values, flags) -> None:
        """Registers a fastcall.Launch of this plan under its flags, checked against this
        call's arguments: later calls with the same metadata skip the signature and this
        Python launch (benchmarks/NOTES.md, "Eager decode step"). Nothing where the module
        cannot be built or the launcher cannot say what it launches; while the module builds
        (a thread: the first use on a machine), a later run of this plan tries again."""
        from .backends import fastcall

        fast_parts = getattr(self.launch, "fast_parts", None)
        mod = fastcall.module(wait=False) if fast_parts is not None else None
        if mod is None and fast_parts is not None and fastcall.building():
            return
        self.fast_tried = True
        parts = fast_parts(values) if mod is not None else None
        if parts is None:
            return
        at = parts["cell_of"]
        slots = [(at[i], j, parts["aligned"][i], 0) for i, j, _ in self.slots]
        launch = fastcall.make(mod, raw, parts, slots,
                               [(at[self.out], 1, list(self.x_shape), False)], device_like=1)
        if launch is not None:
            _plans.put_fast(flags, launch, parts["guard"])


def _view_dtype(t):
    """The dtype of the fp32 view the kernels read of a complex tensor."""
    return torch.float32 if t.dtype == torch.complex64 else t.dtype


def step_config(mod, call: StepCall, config, backend: str):
    """The step kernel's config: given (dict or KernelConfig), tuned record, else default."""
    from . import autotune

    if config is None:
        k = autotune.choose_step(call, backend)
    elif isinstance(config, dict):
        k = mod.KernelConfig(**config)
    elif isinstance(config, mod.KernelConfig):
        k = config
    else:
        raise TypeError(f"config must be None, a dict or {mod.__name__}.KernelConfig, got "
                        f"{type(config).__name__}")
    mod.check_step(call.spec, k)
    return k
