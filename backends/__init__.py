"""Backends: each module renders kernels for a ScanSpec and runs them. A backend provides
`TEMPLATES`, a config class with `from_dict`/`to_dict`/`encode`/`decode`, `default_config(spec)`,
`candidates(spec, sizes, limits)` (its pruned search space), `forward(call, cfg, save_ckpt)` and
`backward(call, cfg, ckpt, dout)`. The tuner and the cache reach backends only through this
table, so a new backend is one more entry here."""
import importlib

NAMES = ("triton", "cuda")
_MODULES = {"triton": "ssmgen.backends.triton_backend", "cuda": "ssmgen.backends.cuda_backend"}


def get(name: str):
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; known: {NAMES}")
    return importlib.import_module(_MODULES[name])
