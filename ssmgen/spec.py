"""ScanSpec: the one place a selective-scan variant is described.

Backends render kernels from it, the tuner and the cache key on it; nobody re-derives a variant
from tensors except `ScanSpec.from_inputs`, which is the single door from a call to a spec.

Key stability: `key()` lists fields in a fixed order and writes a field only when it differs from
its default. A field added later with a default therefore leaves every existing key unchanged.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields

MAX_D_STATE = 512
DTYPES = ("float32", "float16", "bfloat16")
DTYPE_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
BC_LAYOUTS = ("constant", "variable")
KEY_VERSION = "ss1"


@dataclass(frozen=True)
class ScanSpec:
    """One selective-scan variant.

    d_state:          N, any integer 1..MAX_D_STATE.
    dtype:            dtype of u, delta, z, out and of variable B/C ("float32", "float16", "bfloat16").
    complex_A:        A complex (state, B, C complex) instead of real.
    B_layout/C_layout: "constant" = (dim, N) fp32/complex64; "variable" = (batch, groups, N, L).
    has_D, has_z, has_delta_bias, delta_softplus, return_last_state: the options of selective_scan_fn.
    chunk_len:        timesteps between state checkpoints saved for backward (power of two, 16..4096).
    has_initial_state: the scan starts from a given state (batch, dim, N), with varlen one per
                      sequence (num_seqs, dim, N), instead of zero; its gradient is returned.
                      (The final state's gradient always flows back.)
    reverse:          the scan runs from the last timestep to the first (bidirectional models).
    varlen:           packed sequences (batch 1, boundaries in cu_seqlens): the state resets at
                      every sequence start, to zero or to the sequence's initial state; the last
                      state is per sequence.
    has_state_indices: decode step only: each batch row's state is picked from a pool by index
                      (mamba-ssm's state_batch_indices).
    deterministic:    backward only, with variable B or C: their gradients are summed over the
                      channel blocks in a fixed order (one fp32 partial per block, summed after
                      the kernel) instead of by atomics, so repeated backwards are bit-identical.
    """

    d_state: int
    dtype: str = "float32"
    complex_A: bool = False
    B_layout: str = "variable"
    C_layout: str = "variable"
    has_D: bool = False
    has_z: bool = False
    has_delta_bias: bool = False
    delta_softplus: bool = False
    return_last_state: bool = False
    chunk_len: int = 256
    # Fields added later go below with a default, so key() stays the same for older specs.
    has_initial_state: bool = False
    reverse: bool = False
    varlen: bool = False
    has_state_indices: bool = False
    deterministic: bool = False

    def __post_init__(self):
        _validate(self)

    # -- identity -------------------------------------------------------------------------
    def key(self) -> str:
        """Canonical string, stable across processes and Python versions (no hash())."""
        parts = [KEY_VERSION, f"n{self.d_state}", DTYPE_SHORT[self.dtype]]
        for f in fields(self):
            if f.name in ("d_state", "dtype"):
                continue
            v = getattr(self, f.name)
            if v != f.default:
                parts.append(f"{f.name}={_fmt(v)}")
        return "-".join(parts)

    def short_name(self, chunk: bool = True) -> str:
        """Readable tag for kernel names: every field, always in the same order (chunk=False:
        without chunk_len, for the decode step, which has no chunks)."""
        bits = [f"n{self.d_state}", DTYPE_SHORT[self.dtype], "cplx" if self.complex_A else "real",
                "B" + self.B_layout[0], "C" + self.C_layout[0]]
        for flag, tag in (("has_D", "D"), ("has_z", "z"), ("has_delta_bias", "db"),
                          ("delta_softplus", "sp"), ("return_last_state", "last"),
                          ("has_initial_state", "h0"), ("reverse", "rev"), ("varlen", "vl"),
                          ("has_state_indices", "idx"), ("deterministic", "det")):
            if getattr(self, flag):
                bits.append(tag)
        if chunk:
            bits.append(f"c{self.chunk_len}")
        return "_".join(bits)

    def to_json(self) -> str:
        return _to_json(self)

    @classmethod
    def from_json(cls, text: str) -> "ScanSpec":
        return _from_json(cls, text)

    def replace(self, **changes) -> "ScanSpec":
        return dataclasses.replace(self, **changes)

    # -- derived facts the backends read ----------------------------------------------------
    @property
    def is_variable_B(self) -> bool:
        return self.B_layout == "variable"

    @property
    def is_variable_C(self) -> bool:
        return self.C_layout == "variable"

    @classmethod
    def from_inputs(cls, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                    delta_softplus=False, return_last_state=False, chunk_len=None,
                    **variants) -> "ScanSpec":
        """The spec of a `selective_scan` call (validates the tensors too); variants:
        initial_state, cu_seqlens, reverse as in `selective_scan`."""
        from .inputs import normalize  # local: inputs imports spec

        return normalize(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                         return_last_state, chunk_len=chunk_len, **variants).spec


def _to_json(spec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def _from_json(cls, text: str):
    data = json.loads(text)
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__}.from_json: unknown fields {sorted(unknown)}")
    return cls(**data)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _validate(s: ScanSpec) -> None:
    def need(cond, msg):
        if not cond:
            raise ValueError(f"ScanSpec: {msg}")

    if not isinstance(s.d_state, int) or isinstance(s.d_state, bool):
        raise TypeError(f"ScanSpec: d_state must be an int, got {type(s.d_state).__name__}")
    need(1 <= s.d_state <= MAX_D_STATE, f"d_state must be in 1..{MAX_D_STATE}, got {s.d_state}")
    need(s.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {s.dtype!r}")
    need(s.B_layout in BC_LAYOUTS, f"B_layout must be one of {BC_LAYOUTS}, got {s.B_layout!r}")
    need(s.C_layout in BC_LAYOUTS, f"C_layout must be one of {BC_LAYOUTS}, got {s.C_layout!r}")
    for name in ("complex_A", "has_D", "has_z", "has_delta_bias", "delta_softplus",
                 "return_last_state", "has_initial_state", "reverse", "varlen",
                 "has_state_indices", "deterministic"):
        if not isinstance(getattr(s, name), bool):
            raise TypeError(f"ScanSpec: {name} must be a bool, got {getattr(s, name)!r}")
    c = s.chunk_len
    need(isinstance(c, int) and not isinstance(c, bool) and 16 <= c <= 4096 and c & (c - 1) == 0,
         f"chunk_len must be a power of two in 16..4096, got {c!r}")
    need(not s.deterministic or s.is_variable_B or s.is_variable_C,
         "deterministic only changes the backward of variable B or C (the rest has no atomics)")


SSD_KEY_VERSION = "ssd1"


@dataclass(frozen=True)
class SSDSpec:
    """One variant of Mamba-2's SSD scan (scalar decay per head; ssmgen.ssd's semantics).

    d_state:        N, 1..MAX_D_STATE.
    headdim:        P, the channels of one head (x, z, out: (batch, seqlen, heads, headdim)).
    dtype:          x, z, B, C and out ("float32", "float16", "bfloat16").
    dt_dtype:       dt's dtype: dtype or "float32".
    has_D, D_per_channel: D given, shaped (heads, headdim) instead of (heads,).
    has_z, has_dt_bias, dt_softplus: the options of mamba_chunk_scan_combined (dt_limit is a
                    runtime argument, always applied as a clamp).
    has_initial_state, return_final_states: start from a given state / return the last one,
                    both (batch, heads, headdim, d_state) fp32, with gradients.
    has_seq_idx:    packed sequences (seq_idx (batch, seqlen) int32): C B^T terms only within a
                    sequence, and the state (forward) and its gradient (backward) restart where
                    seq_idx changes.
    Groups, heads, seqlen and batch are runtime sizes; the user's chunk_size is not part of the
    variant: the kernels' block length is a tuning choice (it moves only rounding).
    """

    d_state: int
    headdim: int
    dtype: str = "bfloat16"
    dt_dtype: str = "float32"
    has_D: bool = False
    D_per_channel: bool = False
    has_z: bool = False
    has_dt_bias: bool = False
    dt_softplus: bool = False
    has_initial_state: bool = False
    return_final_states: bool = False
    # Fields added later go below with a default, so key() stays the same for older specs.
    has_seq_idx: bool = False

    def __post_init__(self):
        for name in ("d_state", "headdim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"SSDSpec: {name} must be a positive int, got {v!r}")
        if self.d_state > MAX_D_STATE:
            raise ValueError(f"SSDSpec: d_state must be in 1..{MAX_D_STATE}, got {self.d_state}")
        if self.dtype not in DTYPES:
            raise ValueError(f"SSDSpec: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.dt_dtype not in (self.dtype, "float32"):
            raise ValueError(f"SSDSpec: dt_dtype must be dtype or float32, got {self.dt_dtype!r}")
        for f in fields(self)[4:]:
            if not isinstance(getattr(self, f.name), bool):
                raise TypeError(f"SSDSpec: {f.name} must be a bool, got {getattr(self, f.name)!r}")
        if self.D_per_channel and not self.has_D:
            raise ValueError("SSDSpec: D_per_channel needs has_D")

    def key(self) -> str:
        parts = [SSD_KEY_VERSION, f"n{self.d_state}", f"p{self.headdim}", DTYPE_SHORT[self.dtype]]
        for f in fields(self)[3:]:
            v = getattr(self, f.name)
            if v != f.default:
                parts.append(f"{f.name}={_fmt(v)}")
        return "-".join(parts)

    def short_name(self) -> str:
        """Every field, in a fixed order, for kernel names."""
        bits = [f"n{self.d_state}", f"p{self.headdim}", DTYPE_SHORT[self.dtype],
                "dt" + DTYPE_SHORT[self.dt_dtype]]
        for flag, tag in (("has_D", "D"), ("D_per_channel", "Dp"), ("has_z", "z"),
                          ("has_dt_bias", "db"), ("dt_softplus", "sp"),
                          ("has_initial_state", "h0"), ("return_final_states", "last"),
                          ("has_seq_idx", "seq")):
            if getattr(self, flag):
                bits.append(tag)
        return "_".join(bits)

    def to_json(self) -> str:
        return _to_json(self)

    @classmethod
    def from_json(cls, text: str) -> "SSDSpec":
        return _from_json(cls, text)
