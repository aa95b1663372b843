"""Falling back when a backend cannot build its kernels here (a template that fails to render
or compile, a broken compiler, an unwritable cache): only when ssmgen chose the backend itself
(backend=None, config=None), the call moves on CUDA -> Triton -> reference with one warning per
(backend, spec) and skips that pair from then on. An explicitly asked backend raises."""
from __future__ import annotations

import warnings

_NEXT = {"cuda": "triton", "triton": "reference"}
_failed: dict = {}  # (backend, spec) -> the fault


def faults() -> tuple:
    """What a backend raises when it cannot build or run a kernel here (never bad input: that is
    a ValueError / TypeError from normalize, raised before)."""
    import jinja2

    from ssmgen.backends.cuda_runtime import CudaCompileError

    found = [CudaCompileError, jinja2.TemplateError, SyntaxError, ImportError, OSError]
    try:
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import OutOfResources

        found += [CompilationError, OutOfResources]
    except ImportError:
        pass
    return tuple(found)


def prepare(name: str, call, cfg, backward: bool) -> None:
    """Renders and compiles (no launch) the forward kernel and, when a backward can follow, the
    backward one, so that a kernel that cannot be built fails here, where the call can still
    fall back, and not inside loss.backward(). Raises the earlier fault of a failed pair."""
    key = (name, call.spec)  # the frozen spec: hashing it is cheaper than building its key
    if key in _failed:
        raise _failed[key]
    from ssmgen import backends

    backends.get(name).build(call, cfg, ["fwd"] + (["bwd"] if backward else []))


def next_backend(name: str, call, error: Exception, interpreting: bool) -> str:
    """The backend after `name`, which failed on this call's kernels; warns once per pair."""
    key = (name, call.spec)  # the frozen spec: hashing it is cheaper than building its key
    nxt = _NEXT[name]
    if nxt == "triton" and call.u.device.type != "cuda" and not interpreting:
        nxt = "reference"
    if key not in _failed:
        _failed[key] = error
        first = str(error).splitlines()[0][:200] if str(error) else ""
        warnings.warn(f"ssmgen: the {name} kernels for {call.spec.key()} cannot be built here "
                      f"({type(error).__name__}: {first}); using the {nxt} backend for them in "
                      f"this process")
    return nxt
