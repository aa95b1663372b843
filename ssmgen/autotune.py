"""The autotuner: candidates from a backend's search space, each checked against the float64
reference on a proxy problem before it is timed, timings by a replaceable timer.

Nothing is tuned implicitly unless SSMGEN_AUTOTUNE=1 or `tune(...)` is called. `choose` is what a
call uses: the cached record (exact, else nearest bucket) or the backend's heuristic default.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import time
import warnings

import torch

from . import backends, render, tunecache
from .backends import buffers
from .inputs import DEFAULT_CHUNK_LEN, Call, normalize
from .numerics import assert_close
from .reference import selective_scan_ref

L2_FLUSH_BYTES = 256 * 2**20
REFINE_SHARE = 0.25  # of each kind's time budget, kept for a backend's second round
# A backward within this share of the fastest wins if its chunks are longer: the forward keeps
# one fp32 checkpoint per chunk, (batch, dim, L / chunk, N), which at d_state 64-128 and chunk
# 64 is most of the forward+backward's peak memory (m1_n64: 134 MB of 399)
MEMORY_SLACK = 0.05


def tuning_key(spec) -> str:
    """The spec's key with chunk_len left out (the tuner chooses it), and the fields that change
    neither the kernels' work nor their resources (direction, a start state): a reverse scan
    runs with the forward scan's record."""
    return spec.replace(chunk_len=DEFAULT_CHUNK_LEN, reverse=False,
                        has_initial_state=False).key()


@functools.lru_cache(maxsize=None)
def template_hash(backend: str) -> str:
    return render.template_hash(*backends.get(backend).TEMPLATES)


def cuda_event_timer(fn, warmup: int = 3, reps: int = 25) -> float:
    """Median ms over reps, CUDA events around each call, L2 flushed before each (a 256 MB
    write), so small shapes are not timed out of the cache."""
    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def _order(spec, cands, per_thread, default):
    """Most promising first (so a time budget or a cap keeps the likely winners): the default,
    then by distance of the tile from 32 values per thread, then fewer warps."""
    def score(k):
        return (k != default, abs(math.log2(max(per_thread(spec, k), 1) / 32)), k.num_warps,
                -k.block_l, dataclasses.astuple(k))
    return sorted(cands, key=score)


class _Proxy:
    """Batch 1, the full dim, a sequence long enough to cross every candidate chunk boundary:
    the candidate's output and every gradient must match the float64 reference here."""

    def __init__(self, inputs, delta_softplus, max_chunk, variants):
        u = inputs[0]
        L = min(u.shape[-1], 2 * max_chunk + 37)
        cplx = inputs[2].is_complex()
        v = dict(variants)
        if v.get("initial_state") is not None:
            v["initial_state"] = v["initial_state"][:1]
        if v.get("cu_seqlens") is not None:  # the boundaries inside the cut, and its end
            cu = v["cu_seqlens"]
            v["cu_seqlens"] = torch.cat([cu[cu < L], cu.new_tensor([L])])

        def cut(t, name):
            if t is None:
                return None
            if name in ("u", "delta", "z"):
                return t[:1, :, :L]
            if name in ("B", "C") and t.dim() >= 3:
                Lx = 2 * L if cplx and not t.is_complex() else L
                return t[:1, ..., :Lx]
            return t

        names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
        self.x = [cut(t, n) for t, n in zip(inputs, names)]
        self.kw = dict(delta_softplus=delta_softplus, return_last_state=True, **v)
        with torch.enable_grad():
            self._reference(u)

    def _reference(self, u):
        leaves = self._leaves()
        out, last = selective_scan_ref(*leaves, **self.kw)
        g = torch.Generator(device=u.device).manual_seed(7)
        self.dout = torch.randn(out.shape, generator=g, device=u.device).to(u.dtype)
        present = [t for t in leaves if t is not None]
        self.ref = (out.detach(), last.detach(),
                    torch.autograd.grad(out, present, self.dout.double()))
        self.dtype = u.dtype

    def _leaves(self):
        return [t.detach().clone().requires_grad_(True) if t is not None else None
                for t in self.x]

    @torch.enable_grad()
    def check(self, backend: str, config: dict):
        import ssmgen

        leaves = self._leaves()
        out, last = ssmgen.selective_scan(*leaves, **self.kw, backend=backend, config=config)
        present = [t for t in leaves if t is not None]
        grads = torch.autograd.grad(out, present, self.dout)
        assert_close("out", out, self.ref[0], self.dtype)
        assert_close("last_state", last, self.ref[1], self.dtype)
        for i, (g, r) in enumerate(zip(grads, self.ref[2])):
            assert_close(f"grad {i}", g, r, self.dtype)


def plan(mod, spec, dim: int, seqlen: int, max_fwd: int, max_bwd: int):
    """The candidates tune() measures, in order: forward KernelConfigs and backward
    (chunk_len, KernelConfig) pairs; the default config comes first in both."""
    default = mod.default_config(spec)
    cands = mod.candidates(spec, dim, seqlen)
    fwd = [default.fwd] + [k for k in _order(spec, cands["fwd"], mod.per_thread, default.fwd)
                           if k != default.fwd]
    # per chunk length, most promising first; interleaved so that a cap keeps some of each;
    # chunks shorter than the memory rule's are left out where longer ones exist (pick would
    # not take them)
    chunks = {c for c, _ in cands["bwd"]}
    chunks = {c for c in chunks if c >= buffers.memory_chunk_len(spec)} or chunks
    chunks = sorted(chunks, key=lambda c: (c != spec.chunk_len, c))
    per_chunk = [[(c, k) for k in _order(spec, [k for cc, k in cands["bwd"] if cc == c],
                                         mod.per_thread, default.bwd)] for c in chunks]
    bwd = [pair for rank in itertools.zip_longest(*per_chunk) for pair in rank if pair]
    bwd = [(spec.chunk_len, default.bwd)] + [p for p in bwd if p != (spec.chunk_len, default.bwd)]
    return fwd[:max_fwd], bwd[:max_bwd]


def tune(inputs, delta_softplus=True, backend: str = "triton", *, variants=None, timer=None,
         max_fwd=12, max_bwd=16, budget_s=None, device=None, save=True, progress=None,
         keep_fwd: dict | None = None, keep_bwd: dict | None = None,
         earlier: dict | None = None) -> dict:
    """Tunes one problem (the tensors of a call; variants: initial_state / cu_seqlens / reverse
    as in selective_scan); returns the record (saved unless save=False).

    keep_fwd: an earlier record of this problem (earlier_record) whose forward config is timed
    alone, the whole budget going to the backward: after a change to the backward's templates
    only, where a full tune's budget can miss forward candidates the last one found. The record
    names where its forward came from (fwd_from). keep_bwd: the same for the backward (its
    chunk_len and config; bwd_from), after a forward-only change. earlier: an earlier record of
    this problem whose configs join the candidates right after the defaults, beyond the caps
    (max_fwd, max_bwd) where those dropped them, so that a tune cannot lose a previous winner
    (seen: m1_n128's forward, NOTES "CUDA forward v4").

    timer(fn) -> ms; default: CUDA events with an L2 flush. device: the record's device dict
    (default: the current CUDA device). progress(done, total, text) is called per candidate."""
    if keep_fwd is not None and keep_bwd is not None:
        raise ValueError("keep_fwd and keep_bwd: keeping both kinds leaves nothing to tune")
    mod = backends.get(backend)
    timer = timer or cuda_event_timer
    t_start = time.perf_counter()
    variants = {k: v for k, v in (variants or {}).items() if v is not None}
    call = normalize(*inputs, delta_softplus=delta_softplus, **variants)
    spec = call.spec
    default = mod.default_config(spec)
    fwd, bwd = plan(mod, spec, call.dim, call.seqlen, max_fwd, max_bwd)
    if earlier is not None:
        fwd, bwd = _with_earlier(earlier, default, fwd, bwd)
    if keep_fwd is not None:
        fwd = [type(default.fwd)(**keep_fwd["config"]["fwd"])]
    if keep_bwd is not None:
        bwd = [(keep_bwd["config"]["chunk_len"], type(default.bwd)(**keep_bwd["config"]["bwd"]))]
    proxy = _Proxy(inputs, delta_softplus, max(c for c, _ in bwd), variants)
    dout = torch.randn_like(call.u)
    total, done, rows = len(fwd) + len(bwd), 0, []

    # the budget is split by candidate count, so forward candidates cannot starve the backward;
    # a backend's second round (refine) keeps the last REFINE_SHARE of each kind's part
    refine = getattr(mod, "refine", None)
    share = {"fwd": len(fwd) / max(1, total), "bwd": 1.0}
    stage = {"first": 1.0 - REFINE_SHARE if refine else 1.0, "refine": 1.0}
    now = {"stage": "first"}

    tried = {"fwd": 0, "bwd": 0}

    def over_budget(kind):
        # the first candidate of each kind (the default) is always timed, so a spent budget
        # still leaves a record instead of no valid candidate
        lo = share["fwd"] if kind == "bwd" else 0.0
        limit = lo + (share[kind] - lo) * stage[now["stage"]]
        return (budget_s is not None and tried[kind] > 0
                and time.perf_counter() - t_start > budget_s * limit)

    def run(kind, chunk, k, cfg_dict, make_fn):
        nonlocal done
        row = {"kind": kind, "chunk_len": chunk, "config": dataclasses.asdict(k), "ms": None,
               "error": None}
        if over_budget(kind):
            row["error"] = "skipped: time budget spent"
        else:
            tried[kind] += 1
            try:
                proxy.check(backend, cfg_dict)  # a fast wrong kernel never wins
                row["ms"] = timer(make_fn())
            except Exception as e:  # compile error, launch failure or wrong numbers
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        rows.append(row)
        done += 1
        if progress:
            progress(done, total, f"{kind} c{chunk} {k.label()}"
                     + (f" {row['ms']:.3f} ms" if row["ms"] is not None else " invalid"))
        return row

    cfg_cls = type(default)

    def run_fwd(k):
        cfg = cfg_cls(k, default.bwd)
        return run("fwd", spec.chunk_len, k, {"chunk_len": spec.chunk_len, **cfg.to_dict()},
                   lambda: functools.partial(mod.forward, call, cfg, False))

    def run_bwd(chunk, k):
        c_call = call.with_chunk_len(chunk)
        cfg = cfg_cls(mod.default_config(c_call.spec).fwd, k)

        def make():
            _, _, ckpt = mod.forward(c_call, cfg, True)
            return functools.partial(mod.backward, c_call, cfg, ckpt, dout)

        return run("bwd", chunk, k, {"chunk_len": chunk, **cfg.to_dict()}, make)

    def best(kind):
        ok = [r for r in rows if r["kind"] == kind and r["ms"] is not None]
        return min(ok, key=lambda r: r["ms"], default=None)

    # a second round where the backend has one (CUDA: the best config of each kind with other
    # split counts), refining the winner of the first
    for k in fwd:
        run_fwd(k)
    now["stage"] = "refine"
    if refine and keep_fwd is None and (b := best("fwd")):
        extra = refine(spec, call, type(default.fwd)(**b["config"]), "fwd")
        total += len(extra)
        for k in extra:
            run_fwd(k)
    now["stage"] = "first"
    for chunk, k in bwd:
        run_bwd(chunk, k)
    now["stage"] = "refine"
    if refine and keep_bwd is None and (b := best("bwd")):
        c_spec = spec.replace(chunk_len=b["chunk_len"])
        extra = refine(c_spec, call, type(default.bwd)(**b["config"]), "bwd")
        total += len(extra)
        for k in extra:
            run_bwd(b["chunk_len"], k)
    rec = _record(backend, spec, call, rows, default, device, time.perf_counter() - t_start)
    for kind, kept in (("fwd", keep_fwd), ("bwd", keep_bwd)):
        if kept is not None:
            rec[f"{kind}_from"] = (f"kept from the record of template {kept['template_hash']} "
                                   f"({kept.get('date', '?')}), timed again "
                                   f"(ssmgen tune --keep-{kind})")
    if save:
        tunecache.write_records([rec])
    return rec


def _with_earlier(rec: dict, default, fwd: list, bwd: list):
    """The (capped) candidate lists with `rec`'s forward config and (chunk_len, backward
    config) moved or added second, after the defaults: one more candidate where the cap had
    dropped it. A config this version cannot build is left out."""
    try:
        k_f = type(default.fwd)(**rec["config"]["fwd"])
        pair = (rec["config"]["chunk_len"], type(default.bwd)(**rec["config"]["bwd"]))
    except (KeyError, TypeError, ValueError):
        return fwd, bwd

    def second(cands, c):
        return cands if cands[0] == c else cands[:1] + [c] + [x for x in cands[1:] if x != c]

    return second(fwd, k_f), second(bwd, pair)


def earlier_record(backend: str, inputs, delta_softplus=True, variants=None,
                   device_name: str | None = None) -> dict | None:
    """The newest record of this backend, device, tuning key and exact shape, whatever its
    template version (tune's earlier, keep_fwd / keep_bwd), or None."""
    from . import device as dev

    call = normalize(*inputs, delta_softplus=delta_softplus,
                     **{k: v for k, v in (variants or {}).items() if v is not None})
    name = device_name or dev.info()["name"]
    shape = {"batch": call.batch, "dim": call.dim, "seqlen": call.seqlen}
    hits = [r for r in tunecache.all_records()
            if r.get("backend") == backend and r.get("spec_key") == tuning_key(call.spec)
            and r.get("shape") == shape and r.get("device", {}).get("name") == name
            and isinstance(r.get("config", {}).get("fwd"), dict)]
    return max(hits, key=lambda r: r.get("date", ""), default=None)


def pick(rows, fwd_cls, min_chunk: int = 0) -> tuple:
    """(forward row, backward row) a record takes from its timed candidates (None where none
    is valid): among the backwards with chunks of at least min_chunk steps (all of them where
    none is; buffers.memory_chunk_len: checkpoints no larger than u), the one with the longest
    chunks among those within MEMORY_SLACK of the fastest; then the fastest forward whose tile
    fits its chunk."""
    ok = [r for r in rows if r["ms"] is not None]
    bwd = [r for r in ok if r["kind"] == "bwd"]
    bwd = [r for r in bwd if r["chunk_len"] >= min_chunk] or bwd
    fastest = min((r["ms"] for r in bwd), default=None)
    best_b = max((r for r in bwd if r["ms"] - fastest <= MEMORY_SLACK * abs(fastest)),
                 key=lambda r: (r["chunk_len"], -r["ms"]), default=None)
    chunk = best_b["chunk_len"] if best_b else None
    fits = [r for r in ok if r["kind"] == "fwd"
            and (chunk is None or fwd_cls(**r["config"]).block_l <= chunk)]
    return min(fits, key=lambda r: r["ms"], default=None), best_b


def _record(backend, spec, call: Call, rows, default, device, seconds) -> dict:
    from . import device as dev

    ok = [r for r in rows if r["ms"] is not None]
    best_f, best_b = pick(rows, type(default.fwd), buffers.memory_chunk_len(spec))
    chunk = best_b["chunk_len"] if best_b else spec.chunk_len
    if best_f is None or best_b is None:
        raise RuntimeError(f"autotune: no valid candidate for {spec.key()}; errors: "
                           f"{sorted({r['error'] for r in rows if r['error']})[:3]}")

    def default_ms(kind):
        k = dataclasses.asdict(getattr(default, kind))
        hit = [r for r in ok if r["kind"] == kind and r["config"] == k
               and r["chunk_len"] == spec.chunk_len]
        return hit[0]["ms"] if hit else None

    return {
        "backend": backend, "template_hash": template_hash(backend), "spec_key": tuning_key(spec),
        "spec": spec.replace(chunk_len=chunk).to_json(),
        "bucket": tunecache.bucket(call.batch, call.dim, call.seqlen),
        "shape": {"batch": call.batch, "dim": call.dim, "seqlen": call.seqlen},
        "device": device or dev.info(), "versions": dev.versions(),
        "date": time.strftime("%Y-%m-%d"), "tune_seconds": round(seconds, 1),
        "config": {"chunk_len": chunk, "fwd": best_f["config"], "bwd": best_b["config"]},
        "fwd_ms": best_f["ms"], "bwd_ms": best_b["ms"],
        "default": {"config": {"chunk_len": spec.chunk_len, **default.to_dict()},
                    "fwd_ms": default_ms("fwd"), "bwd_ms": default_ms("bwd")},
        "candidates": rows,
    }


def choose(call: Call, backend: str = "triton"):
    """The config a call runs with when none is given: (chunk_len, backend config, how).
    how: "exact" / "nearest" (a cached record) or "default" (the backend's heuristic). Only
    CUDA tensors consult the cache. Under SSMGEN_AUTOTUNE=1 a missing exact record raises
    NeedsTuning (the caller tunes with the call's tensors)."""
    mod = backends.get(backend)
    if call.u.device.type != "cuda":
        chunk = mod.default_chunk_len(call.spec)
        return chunk, mod.default_config(call.spec.replace(chunk_len=chunk)), "default"
    found = _cached_choice(backend, call.spec.to_json(), call.u.device.index or 0, call.batch,
                           call.dim, call.seqlen)
    how, chunk, encoded = found.split("|")
    if how != "exact" and os.environ.get("SSMGEN_AUTOTUNE") == "1":
        raise NeedsTuning()
    cfg_cls = type(mod.default_config(call.spec))
    return int(chunk), cfg_cls.decode(encoded), how


@torch.compiler.assume_constant_result
def _cached_choice(backend: str, spec_json: str, device_index: int, batch: int, dim: int,
                   seqlen: int) -> str:
    """"how|chunk_len|encoded config" (a string, so torch.compile can treat the lookup, which
    reads files, as a constant of the traced call); memoized until a cache file changes."""
    return _memo((backend, spec_json, device_index, batch, dim, seqlen),
                 lambda recs: _lookup_choice(backend, spec_json, device_index, batch, dim,
                                             seqlen, recs))


_choices: dict = {}


def _memo(key, compute):
    """compute(records) once per key, again only when a cache file changed (all_records()
    then returns a new list)."""
    recs = tunecache.all_records()
    hit = _choices.get(key)
    if hit is not None and hit[0] is recs:
        return hit[1]
    found = compute(recs)
    _choices[key] = (recs, found)
    return found


def _lookup_choice(backend, spec_json, device_index, batch, dim, seqlen, recs) -> str:
    from . import device as dev
    from .spec import ScanSpec

    mod = backends.get(backend)
    spec = ScanSpec.from_json(spec_json)
    rec, how = tunecache.lookup(dev.info(device_index)["name"], backend, template_hash(backend),
                                tuning_key(spec), tunecache.bucket(batch, dim, seqlen), recs)
    if rec is not None:
        try:  # a record this ssmgen cannot use (edited, or of other limits): the default
            cfg = dict(rec["config"])
            chunk = cfg.pop("chunk_len")
            run_spec = spec.replace(chunk_len=chunk)  # validates chunk_len
            sc = type(mod.default_config(spec)).from_dict(cfg)
            sc.fwd.check(run_spec, "fwd")
            sc.bwd.check(run_spec, "bwd")
            return f"{how}|{chunk}|{sc.encode()}"
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            _unusable(rec, e)
    chunk = mod.default_chunk_len(spec)
    return f"default|{chunk}|{mod.default_config(spec.replace(chunk_len=chunk)).encode()}"


def _unusable(rec, e) -> None:
    """One warning per process for a tuning record whose config cannot run (the lookup is
    memoized, so this runs once per record until a cache file changes)."""
    rid = tunecache.record_id(rec)
    if rid not in _warned_records:
        _warned_records.add(rid)
        warnings.warn(f"ssmgen: tuning record {rid} has an unusable config "
                      f"({type(e).__name__}: {e}); using the default config")


_warned_records: set = set()


# -- the decode step --------------------------------------------------------------------------
def step_key(spec) -> str:
    return "step-" + spec.replace(chunk_len=DEFAULT_CHUNK_LEN).key()


@functools.lru_cache(maxsize=None)
def step_template_hash(backend: str) -> str:
    return render.template_hash(*backends.get(backend).STEP_TEMPLATES)


def _step_bucket(call) -> dict:
    return tunecache.bucket(call.batch, call.heads * call.headdim, 1)


def choose_step(call, backend: str):
    """The step's KernelConfig: the cached record for this GPU, spec and shape class, else the
    backend's default (memoized like the scan's lookup)."""
    mod = backends.get(backend)
    if call.x.device.type != "cuda":
        return mod.default_step_config(call.spec)
    rows = _step_bucket(call)["rows"]
    key = ("step", backend, call.spec, call.x.device.index or 0, rows)  # no serialization
    found = _memo(key, lambda recs: _lookup_step(backend, call.spec, key[3], rows, recs))
    return mod.KernelConfig(**found) if found is not None else mod.default_step_config(call.spec)


def _lookup_step(backend, spec, device_index, rows, recs):
    from . import device as dev

    rec, _ = tunecache.lookup(dev.info(device_index)["name"], backend, step_template_hash(backend),
                              step_key(spec), {"seqlen": 1, "rows": rows}, recs)
    if rec is None:
        return None
    try:  # a record this ssmgen cannot use: the default (one warning)
        found = dict(rec["config"]["step"])
        mod = backends.get(backend)
        mod.check_step(spec, mod.KernelConfig(**found))
        return found
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        _unusable(rec, e)
        return None


def tune_step(args, backend: str = "cuda", *, timer=None, device=None, save=True) -> dict:
    """Tunes the decode step for one problem: args = the arguments of
    ssmgen.selective_state_update (state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
    state_batch_indices). Every candidate runs on a copy of the state (the caller's state is
    never written), is checked against the float64 reference, then timed."""
    from . import device as dev
    from .step import normalize_step, selective_state_update_ref, step_config

    mod = backends.get(backend)
    timer = timer or cuda_event_timer
    t0 = time.perf_counter()
    call = normalize_step(*args)
    state = args[0]
    ref_out, ref_rows = selective_state_update_ref(*args)
    rows = []
    for k in mod.step_candidates(call.spec, call.headdim):
        row = {"kind": "step", "config": dataclasses.asdict(k), "ms": None, "error": None}
        try:
            work = state.clone()
            c = normalize_step(work, *args[1:])
            step_config(mod, c, k, backend)  # validates
            out = mod.step(c, k)
            assert_close("step out", out.reshape(ref_out.shape), ref_out, args[1].dtype)
            idx = args[10]
            got = work[idx.clamp_min(0).long()] if idx is not None else work
            keep = (idx >= 0) if idx is not None else slice(None)
            assert_close("step state", got[keep], ref_rows[keep], torch.float32)
            row["ms"] = timer(functools.partial(mod.step, c, k))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        rows.append(row)
    ok = [r for r in rows if r["ms"] is not None]
    if not ok:
        raise RuntimeError(f"tune_step: no valid candidate; errors {[r['error'] for r in rows][:3]}")
    best = min(ok, key=lambda r: r["ms"])
    default = dataclasses.asdict(mod.default_step_config(call.spec))
    rec = {
        "backend": backend, "template_hash": step_template_hash(backend),
        "spec_key": step_key(call.spec), "spec": call.spec.to_json(),
        "bucket": _step_bucket(call),
        "shape": {"batch": call.batch, "heads": call.heads, "headdim": call.headdim},
        "device": device or dev.info(), "versions": dev.versions(),
        "date": time.strftime("%Y-%m-%d"), "tune_seconds": round(time.perf_counter() - t0, 1),
        "config": {"step": best["config"]}, "step_ms": best["ms"],
        "default": {"config": default,
                    "step_ms": next((r["ms"] for r in ok if r["config"] == default), None)},
        "candidates": rows,
    }
    if save:
        tunecache.write_records([rec])
    return rec


class NeedsTuning(Exception):
    """Raised by choose under SSMGEN_AUTOTUNE=1 when no exact record exists (ops tunes then)."""
