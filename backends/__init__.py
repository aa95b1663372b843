"""Backends: each module renders kernels for a ScanSpec and runs them. A backend provides
`TEMPLATES`, a config class with `from_dict`/`to_dict`/`encode`/`decode`, `default_config(spec)`,
`candidates(spec, sizes, limits)` (its pruned search space), `forward(call, cfg, save_ckpt)` and
`backward(call, cfg, ckpt, dout)`. The tuner and the cache reach backends only through this
table, so a new backend is one more entry here."""
NAMES = ("triton", "cuda")


def get(name: str):
    # plain imports, not importlib: torch.compile traces through this lookup
    if name == "triton":
        from . import triton_backend as mod
    elif name == "cuda":
        from . import cuda_backend as mod
    else:
        raise ValueError(f"unknown backend {name!r}; known: {NAMES}")
    return mod
