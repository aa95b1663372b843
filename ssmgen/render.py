"""Template rendering and the on-disk module cache, shared by every backend.

One Jinja2 environment over the package's templates (StrictUndefined: a missing variable is an
error, never an empty string). Rendered sources are written to the cache directory under a name
that contains the hash of their text, atomically (write to a temp file, then rename), so
concurrent processes never see a half-written module and a template change never reuses a stale
file. Modules are imported from there (Triton's JIT needs real source files).

Faults: a cache directory that cannot be written (read-only, a file in the way) gives one
warning and this process writes into a temporary folder instead; a cached file whose bytes are
not the source it is named after (truncated, edited) is rewritten; a Triton cache directory
(TRITON_CACHE_DIR, else ~/.triton/cache) that cannot be written is redirected to a temporary
folder before the first Triton kernel, with one warning (Triton fails to compile otherwise).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import importlib.util
import os
import sys
import tempfile
import warnings
from pathlib import Path

import jinja2


def cache_dir() -> Path:
    """SSMGEN_CACHE_DIR, else the platform's user cache folder (platformdirs, where installed),
    else $XDG_CACHE_HOME/ssmgen or ~/.cache/ssmgen."""
    root = os.environ.get("SSMGEN_CACHE_DIR")
    if root:
        return Path(root)
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("ssmgen", appauthor=False))
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "ssmgen"


@functools.lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    # templates/ installs as the package ssmgen.templates (see setup.py)
    loader = jinja2.FileSystemLoader(str(importlib.resources.files("ssmgen.templates")))
    return jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def template_hash(*templates: str) -> str:
    """Hash of the template files' text: what a tuning record or cubin depends on."""
    env = environment()
    h = hashlib.sha256()
    for name in templates:
        src, _, _ = env.loader.get_source(env, name)
        h.update(name.encode() + b"\0" + src.encode() + b"\0")
    return h.hexdigest()[:16]


def write_source(subdir: str, stem: str, source: str, suffix: str = ".py") -> Path:
    """Writes source under cache_dir()/subdir as `<stem>_<hash><suffix>` (once; atomic)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return write_file(subdir, f"{stem}_{digest}{suffix}", source.encode())


_fallback: dict = {}  # configured cache root -> the temporary root this process writes instead


def write_file(subdir: str, name: str, data: bytes) -> Path:
    """cache_dir()/subdir/name holding `data`: written once, atomically (temp file + rename);
    reused when it already holds these bytes, rewritten when it holds others (a truncated or
    damaged file). Where the cache directory cannot be written, the file goes into a temporary
    folder for this process instead, with one warning per cache directory."""
    root = cache_dir()
    path = root / subdir / name
    if _holds(path, data):
        return path  # also from a read-only cache someone filled before
    if str(root) not in _fallback:
        try:
            _atomic_write(path, data)
            return path
        except OSError as e:
            fb = Path(tempfile.mkdtemp(prefix="ssmgen-cache-"))
            _fallback[str(root)] = fb
            warnings.warn(f"ssmgen: cannot write the cache directory {root} ({e}); this process "
                          f"writes its kernels to {fb} instead (set SSMGEN_CACHE_DIR to a "
                          f"writable folder to keep them across runs)")
    path = _fallback[str(root)] / subdir / name
    if not _holds(path, data):
        _atomic_write(path, data)
    return path


def _holds(path: Path, data: bytes) -> bool:
    try:
        have = path.read_bytes()
    except OSError:  # missing, or unreadable: written (elsewhere if need be)
        return False
    if have != data:
        warnings.warn(f"ssmgen: cached file {path} does not hold the source it is named after "
                      f"({len(have)} bytes, expected {len(data)}); rewriting it")
        return False
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _unwritable(folder: Path):
    """None if files can be created in folder (made if missing), else the OSError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".probe_")
        os.close(fd)
        os.unlink(tmp)
        return None
    except OSError as e:
        return e


_triton_cache_ok: set = set()


def ensure_triton_cache() -> None:
    """Triton compiles into its cache directory and fails when it cannot write there: if it
    cannot, point TRITON_CACHE_DIR at a fresh temporary folder (once per directory, with one
    warning). Nothing to do under TRITON_INTERPRET=1 (the interpreter compiles nothing)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return
    try:
        import triton

        knobs = triton.knobs.cache
        current = knobs.dir
    except (ImportError, AttributeError):  # a Triton without knobs reads the variable
        knobs = None
        current = os.environ.get("TRITON_CACHE_DIR") or os.path.join(
            os.path.expanduser("~"), ".triton", "cache")
    if current in _triton_cache_ok:
        return
    err = _unwritable(Path(current))
    if err is None:
        _triton_cache_ok.add(current)
        return
    new = tempfile.mkdtemp(prefix="ssmgen-triton-cache-")
    if knobs is not None and "dir" in vars(knobs):
        knobs.dir = new  # set in Python: it wins over the variable (and sets it too)
    else:
        os.environ["TRITON_CACHE_DIR"] = new
    _triton_cache_ok.add(new)
    warnings.warn(f"ssmgen: Triton's cache directory {current} cannot be written ({err}); "
                  f"Triton compiles into {new} for this process instead")


_modules: dict = {}


def load_module(subdir: str, stem: str, source: str):
    """Imports a rendered source (once per process)."""
    ensure_triton_cache()
    path = write_source(subdir, stem, source)
    mod = _modules.get(path)
    if mod is None:
        name = f"ssmgen_generated.{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # triton's JIT looks the module up while compiling
        spec.loader.exec_module(mod)
        _modules[path] = mod
    return mod
