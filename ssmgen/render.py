"""Template rendering and the on-disk module cache, shared by every backend.

One Jinja2 environment over the package's templates (StrictUndefined: a missing variable is an
error, never an empty string). Rendered sources are written to the cache directory under a name
that contains the hash of their text, atomically (write to a temp file, then rename), so
concurrent processes never see a half-written module and a template change never reuses a stale
file. Modules are imported from there (Triton's JIT needs real source files).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import importlib.util
import os
import sys
import tempfile
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
    folder = cache_dir() / subdir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_{digest}{suffix}"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=suffix)
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    return path


_modules: dict = {}


def load_module(subdir: str, stem: str, source: str):
    """Imports a rendered source (once per process)."""
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
