"""The (forward, backward) kernel-config pair every backend uses; each backend names its own
per-kernel config class (a frozen dataclass of ints) in a subclass's KERNEL."""
from __future__ import annotations

from dataclasses import asdict, astuple, dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class ScanConfigBase:
    fwd: Any = None
    bwd: Any = None
    KERNEL: ClassVar[type] = type(None)

    def __post_init__(self):
        for kind in ("fwd", "bwd"):
            if getattr(self, kind) is None:
                object.__setattr__(self, kind, self.KERNEL())

    @classmethod
    def from_dict(cls, d: dict):
        """{"fwd": {...}, "bwd": {...}} or one flat dict of kernel fields for both."""
        try:
            if "fwd" in d or "bwd" in d:
                unknown = set(d) - {"fwd", "bwd"}
                if unknown:
                    raise ValueError(f"config: unknown keys {sorted(unknown)}")
                return cls(cls.KERNEL(**d.get("fwd", {})), cls.KERNEL(**d.get("bwd", {})))
            k = cls.KERNEL(**d)
            return cls(k, k)
        except TypeError as e:  # an unknown field name
            names = sorted(f.name for f in fields(cls.KERNEL()))
            raise TypeError(f"config: {e}; kernel fields are {names} (and chunk_len)") from None

    def to_dict(self) -> dict:
        return {"fwd": asdict(self.fwd), "bwd": asdict(self.bwd)}

    def encode(self) -> str:
        """Compact string passed through the custom ops (plain joins: torch.compile traces
        this, and it cannot trace json)."""
        return ";".join(",".join(str(v) for v in astuple(k)) for k in (self.fwd, self.bwd))

    @classmethod
    def decode(cls, text: str):
        fwd, bwd = (cls.KERNEL(*map(int, part.split(","))) for part in text.split(";"))
        return cls(fwd, bwd)


class IntConfig:
    """Serialization of a frozen dataclass of ints (the SSD kernels' configs): dict form,
    and the compact text passed through the custom ops, after PREFIX where one is set (so
    that the text tells one backend's config from another's)."""

    PREFIX: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        try:
            return cls(**d)
        except TypeError as e:
            raise TypeError(f"config: {e}; fields are {sorted(asdict(cls()))}") from None

    def encode(self) -> str:
        return ",".join(([self.PREFIX] if self.PREFIX else []) + [str(v) for v in astuple(self)])

    @classmethod
    def decode(cls, text: str):
        vals = text.split(",")
        if cls.PREFIX:
            assert vals[0] == cls.PREFIX, text
            vals = vals[1:]
        return cls(*map(int, vals))

    def check_powers(self, choices: tuple = ()) -> None:
        """Every field a positive power of two but those named in choices (checked by the
        caller against their own set)."""
        for name, v in asdict(self).items():
            if name in choices:
                if not isinstance(v, int) or isinstance(v, bool):
                    raise ValueError(f"config.{name} must be an int, got {v!r}")
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v & (v - 1):
                raise ValueError(f"config.{name} must be a positive power of two, got {v!r}")
