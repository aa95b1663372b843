"""Persistent tuning records: shipped read-only files plus the user's cache file.

A record is one tuned (GPU, backend, template hash, spec, shape bucket). Lookup order: the exact
record, then the same GPU, backend, template and spec at the nearest bucket, else nothing (the
caller falls back to the backend's documented heuristic). Given the files, the choice is
deterministic.

Files hold {"format": FORMAT, "records": [...]}. Writes take an exclusive lock, re-read, merge
and replace the file atomically, so concurrent writers never corrupt it or lose each other's
records. A corrupt (bad JSON, not UTF-8, truncated) or foreign-format file gives one warning and
is ignored (and, when written to, moved aside rather than overwritten); a malformed record is
skipped. A file or folder that cannot be written gives one warning; its records stay in memory
for this process and are saved by the next write that succeeds. A template change invalidates
only the records with the old template hash: they stay in the file, unused.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.resources
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

from . import render

FORMAT = 1
KEY_FIELDS = ("backend", "template_hash", "spec_key")


def user_file() -> Path:
    return render.cache_dir() / "autotune" / "records.json"


def shipped_files() -> list:
    """The read-only records that ship in autotune_cache/ (none under SSMGEN_SHIPPED_CACHE=0)."""
    if os.environ.get("SSMGEN_SHIPPED_CACHE", "1") == "0":
        return []
    return _shipped()


@functools.lru_cache(maxsize=None)
def _shipped() -> list:  # package data does not change while the process runs
    root = importlib.resources.files("ssmgen.autotune_cache")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".json"))


def bucket(batch: int, dim: int, seqlen: int) -> dict:
    """Coarse shape class: powers of two of seqlen and of batch*dim (rows of the scan)."""
    p2 = lambda n: 1 << max(0, (int(n) - 1).bit_length())  # noqa: E731
    return {"seqlen": p2(seqlen), "rows": p2(batch * dim)}


def record_id(r: dict) -> tuple:
    return (r["device"]["name"],) + tuple(r[k] for k in KEY_FIELDS) + (
        r["bucket"]["seqlen"], r["bucket"]["rows"])


def _valid(r) -> bool:
    """A record lookup can use: the id's fields of the right types, a positive power-of-two
    bucket (lookup takes its log2) and a config dict. Anything else is skipped, not crashed on."""
    try:
        ident = record_id(r)
        b = r["bucket"]
    except (KeyError, TypeError, IndexError):
        return False
    pow2 = all(type(b[k]) is int and b[k] >= 1 and b[k] & (b[k] - 1) == 0
               for k in ("seqlen", "rows"))
    return all(isinstance(x, str) for x in ident[:4]) and pow2 and isinstance(r["config"], dict)


def read_file(path: Path) -> list:
    """Records of one file; [] with a warning if it is corrupt or of another format."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # no such file (a file in place of a folder)
        return []
    except UnicodeDecodeError as e:  # binary garbage
        warnings.warn(f"ssmgen: tuning cache {path} is corrupt (not UTF-8 text: {e}); ignoring it")
        return []
    except OSError as e:
        warnings.warn(f"ssmgen: cannot read tuning cache {path}: {e}; ignoring it")
        return []
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        warnings.warn(f"ssmgen: tuning cache {path} is corrupt ({type(e).__name__}: "
                      f"{str(e)[:200]}); ignoring it")
        return []
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
        warnings.warn(f"ssmgen: tuning cache {path} has format {fmt!r}, this ssmgen reads "
                      f"{FORMAT}; ignoring it")
        return []
    recs = data.get("records", [])
    if not isinstance(recs, list):
        warnings.warn(f"ssmgen: tuning cache {path} is corrupt (its records are a "
                      f"{type(recs).__name__}, not a list); ignoring it")
        return []
    good = [r for r in recs if _valid(r)]
    if len(good) != len(recs):
        warnings.warn(f"ssmgen: {len(recs) - len(good)} malformed records in {path} ignored")
    return good


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def merge(old: list, new: list) -> list:
    """new replaces old records with the same id; order: old ids first, then added ones."""
    by_id = {record_id(r): r for r in old}
    by_id.update({record_id(r): r for r in new})
    return list(by_id.values())


# Records that could not be written, per file: lookups in this process still see them, and the
# next write to that file that succeeds saves them too.
_unsaved: dict = {}
_write_warned: set = set()


def write_records(records: list, path: Path | None = None, replace_all: bool = False) -> bool:
    """Merges records into the file (or replaces its content); False with one warning per file
    if it cannot be written: the records are then kept in memory for this process (lookups see
    them) and go into the file with the next write that succeeds."""
    path = Path(path or user_file())
    key = str(path)
    pending = merge(_unsaved.get(key, []), records)
    try:
        with _locked(path):
            old = [] if replace_all else _read_for_write(path)
            text = json.dumps({"format": FORMAT, "records": merge(old, pending)}, indent=1,
                              sort_keys=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".records_", suffix=".json")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except OSError as e:
        _unsaved[key] = pending
        _changed()
        if key not in _write_warned:
            _write_warned.add(key)
            warnings.warn(f"ssmgen: cannot write tuning cache {path}: {e}; results kept in "
                          f"memory for this process")
        return False
    _unsaved.pop(key, None)
    _changed()
    return True


def _read_for_write(path: Path) -> list:
    if not path.exists():
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = read_file(path)
    if caught and not recs:  # unreadable: keep its bytes aside instead of overwriting them
        aside = path.with_name(f"{path.name}.bad-{int(time.time())}-{os.getpid()}")
        n = 0
        while aside.exists():  # never overwrite an earlier file kept aside
            n += 1
            aside = aside.with_name(f"{path.name}.bad-{int(time.time())}-{os.getpid()}-{n}")
        os.replace(path, aside)
        warnings.warn(f"ssmgen: {caught[0].message}; moved it to {aside}")
    elif caught:
        warnings.warn(f"ssmgen: {caught[0].message}; {path} is rewritten without them")
    return recs


_cache: dict = {}
writes = 0  # records this process wrote (or kept unsaved): call plans built before are stale


def _changed() -> None:
    global writes
    writes += 1
    _cache.clear()


def _stamp(f: Path) -> int:
    try:
        return f.stat().st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return 0
    except OSError:  # unreadable folder: read_file warns about it
        return -1


def all_records() -> list:
    """Shipped records, then the user's (which win on the same id), then records this process
    could not write; re-read when files change."""
    files = shipped_files() + [user_file()]
    stamp = tuple((str(f), _stamp(f)) for f in files) + (len(_unsaved.get(str(files[-1]), [])),)
    if _cache.get("stamp") != stamp:
        recs = []
        for f in files:
            recs = merge(recs, read_file(f))
        recs = merge(recs, _unsaved.get(str(files[-1]), []))
        _cache.update(stamp=stamp, records=recs)
    return _cache["records"]


def lookup(device: str, backend: str, template_hash: str, spec_key: str, bkt: dict,
           records: list | None = None):
    """(record, "exact" | "nearest") or (None, "default")."""
    recs = [r for r in (all_records() if records is None else records)
            if r["device"]["name"] == device and r["backend"] == backend
            and r["template_hash"] == template_hash and r["spec_key"] == spec_key]
    if not recs:
        return None, "default"

    def distance(r):
        b = r["bucket"]
        return (abs(math.log2(b["seqlen"]) - math.log2(bkt["seqlen"]))
                + abs(math.log2(b["rows"]) - math.log2(bkt["rows"])), b["seqlen"], b["rows"])

    best = min(recs, key=distance)
    return best, ("exact" if distance(best)[0] == 0 else "nearest")
