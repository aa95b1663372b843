"""Autotuner and tuning cache on the CPU, with a replaceable timer: selection, the reference
check of every candidate, invalid candidates, persistence, buckets, invalidation, concurrent
writers, corrupt and foreign files, the CLI."""
import json
import os
import subprocess
import sys
import warnings
from dataclasses import asdict

import pytest
import torch

from ssmgen import autotune, tunecache
from ssmgen.backends import triton_backend
from ssmgen.suite import make_inputs

FAKE_GPU = {"name": "FakeGPU 80GB", "cc": "9.0", "sm_count": 132, "memory_gb": 80.0,
            "driver": "0.0", "cuda": "0.0"}
SHAPE = {"batch": 1, "dim": 4, "seqlen": 40, "d_state": 2, "groups": 1, "dtype": "float32",
         "A": "real"}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SSMGEN_POISON", "1")
    monkeypatch.setenv("SSMGEN_SHIPPED_CACHE", "0")  # only what each test writes
    tunecache._cache.clear()
    return tmp_path / "cache"


def fake_timer(fn):
    """Deterministic 'time' from the config under test: forward prefers small block_l,
    backward prefers large block_d; never runs the kernel (the reference check did)."""
    cfg = fn.args[1]
    if fn.func is triton_backend.forward:
        return fake_timer_fwd(cfg.fwd)
    return 10.0 - cfg.bwd.block_d - cfg.bwd.block_l / 1000


def tune_small(**kw):
    x = make_inputs(SHAPE, device="cpu", seed=3)
    return autotune.tune(x, True, timer=fake_timer, device=FAKE_GPU, max_fwd=3, max_bwd=3, **kw)


@pytest.mark.interp
def test_tune_picks_the_fastest_checked_candidate_and_saves_it(cache_dir):
    rec = tune_small()
    fwd = [r for r in rec["candidates"] if r["kind"] == "fwd"]
    bwd = [r for r in rec["candidates"] if r["kind"] == "bwd"]
    assert len(fwd) == 3 and 2 <= len(bwd) <= 3  # the pruned space of this tiny shape is small
    assert all(r["ms"] is not None and r["error"] is None for r in rec["candidates"])
    assert rec["config"]["fwd"] == min(fwd, key=lambda r: r["ms"])["config"]
    assert rec["config"]["bwd"] == min(bwd, key=lambda r: r["ms"])["config"]
    assert rec["default"]["fwd_ms"] is not None  # the default is always among the candidates
    for field in ("device", "versions", "template_hash", "spec_key", "bucket", "date"):
        assert rec[field]
    saved = tunecache.read_file(tunecache.user_file())
    assert [tunecache.record_id(r) for r in saved] == [tunecache.record_id(rec)]


@pytest.mark.interp
def test_spent_budget_still_times_the_first_candidate_of_each_kind(cache_dir):
    """A shape reached after the run's budget is spent (the CLI gives it ~1 s) still gets a
    record: its first forward and backward candidates are timed, the rest are skipped.
    (Seen on the H100: the last suite shape raised 'no valid candidate'.)"""
    rec = tune_small(budget_s=0.0)
    timed = [r for r in rec["candidates"] if r["ms"] is not None]
    assert sorted(r["kind"] for r in timed) == ["bwd", "fwd"]
    assert all(r["error"] == "skipped: time budget spent" for r in rec["candidates"]
               if r["ms"] is None)


@pytest.mark.interp
def test_keep_fwd_and_keep_bwd_time_the_earlier_config_only_and_say_so(cache_dir):
    """After a backward-only template change (`ssmgen tune --keep-fwd`): the earlier record's
    forward config, whatever its template version, is the only forward timed; the backward is
    tuned as usual; the record names where its forward came from."""
    first = tune_small()
    fwd = [r for r in first["candidates"] if r["kind"] == "fwd"]
    slow = max(fwd, key=lambda r: r["ms"])["config"]   # not what a full tune would pick
    assert slow != first["config"]["fwd"]
    old = dict(first, template_hash="0123456789abcdef", date="2000-01-01",
               config=dict(first["config"], fwd=slow))
    tunecache.write_records([old], replace_all=True)
    x = make_inputs(SHAPE, device="cpu", seed=3)
    kept = autotune.earlier_record("triton", x, device_name=FAKE_GPU["name"])
    assert kept["template_hash"] == "0123456789abcdef"
    assert autotune.earlier_record("triton", x, device_name="Another GPU") is None
    rec = autotune.tune(x, True, timer=fake_timer, device=FAKE_GPU, max_fwd=3, max_bwd=3,
                        keep_fwd=kept)
    timed = [r for r in rec["candidates"] if r["kind"] == "fwd"]
    assert [r["config"] for r in timed] == [slow] and timed[0]["ms"] is not None
    assert rec["config"]["fwd"] == slow and "0123456789abcdef" in rec["fwd_from"]
    assert rec["config"]["bwd"] == first["config"]["bwd"]
    assert rec["template_hash"] == autotune.template_hash("triton")
    # keep_bwd, the mirror (a forward-only change): the backward and its chunk_len kept
    bwd = [r for r in first["candidates"] if r["kind"] == "bwd"]
    slow_b = max(bwd, key=lambda r: r["ms"])
    old_b = dict(old, config=dict(first["config"], chunk_len=slow_b["chunk_len"],
                                  bwd=slow_b["config"]))
    rec = autotune.tune(x, True, timer=fake_timer, device=FAKE_GPU, max_fwd=3, max_bwd=3,
                        keep_bwd=old_b)
    timed = [r for r in rec["candidates"] if r["kind"] == "bwd"]
    assert [(r["chunk_len"], r["config"]) for r in timed] == [(slow_b["chunk_len"],
                                                                slow_b["config"])]
    assert rec["config"]["bwd"] == slow_b["config"] and "bwd_from" in rec
    assert rec["config"]["chunk_len"] == slow_b["chunk_len"]
    assert len([r for r in rec["candidates"] if r["kind"] == "fwd"]) == 3
    with pytest.raises(ValueError, match="keep_fwd and keep_bwd"):
        autotune.tune(x, True, timer=fake_timer, device=FAKE_GPU, keep_fwd=kept, keep_bwd=kept)


@pytest.mark.interp
def test_an_earlier_records_configs_join_the_capped_candidates(cache_dir):
    """`ssmgen tune` passes the shape's newest record: its forward and backward configs are
    timed second, after the defaults, even where the caps would have dropped them (m1_n128's
    forward winner fell out of a 12-candidate cap once)."""
    x = make_inputs(SHAPE, device="cpu", seed=3)
    call = autotune.normalize(*x, delta_softplus=True)
    fwd, bwd = autotune.plan(triton_backend, call.spec, 4, 40, 99, 99)
    capped_f, capped_b = autotune.plan(triton_backend, call.spec, 4, 40, 3, 1)
    k_f = next(k for k in fwd if k not in capped_f)
    c_b, k_b = next(p for p in bwd if p not in capped_b)

    def tune(**kw):
        return autotune.tune(x, True, timer=fake_timer, device=FAKE_GPU, max_fwd=3, max_bwd=1,
                             **kw)

    first = tune(save=False)
    old = dict(first, template_hash="0123456789abcdef",
               config=dict(first["config"], fwd=asdict(k_f), chunk_len=c_b, bwd=asdict(k_b)))
    rec = tune(earlier=old)
    timed_f = [r["config"] for r in rec["candidates"] if r["kind"] == "fwd"]
    timed_b = [(r["chunk_len"], r["config"]) for r in rec["candidates"] if r["kind"] == "bwd"]
    assert timed_f == [asdict(k) for k in capped_f[:1] + [k_f] + capped_f[1:]]
    assert timed_b == [(c, asdict(k)) for c, k in capped_b + [(c_b, k_b)]]
    assert all(r["ms"] is not None for r in rec["candidates"])
    fits = [k for k in capped_f + [k_f] if k.block_l <= rec["config"]["chunk_len"]]
    assert rec["config"]["fwd"] == asdict(min(fits, key=fake_timer_fwd))
    # an earlier config already among the candidates moves up, not in twice
    rec = tune(earlier=dict(old, config=dict(old["config"], fwd=asdict(capped_f[2]))))
    assert [r["config"] for r in rec["candidates"] if r["kind"] == "fwd"] == [
        asdict(k) for k in (capped_f[0], capped_f[2], capped_f[1])]
    # an earlier config this version cannot build is left out, not an error
    broken = dict(old, config=dict(old["config"], fwd={"no_such_field": 1}))
    rec = tune(earlier=broken)
    assert [r["config"] for r in rec["candidates"] if r["kind"] == "fwd"] == [
        asdict(k) for k in capped_f]


def fake_timer_fwd(k):
    return 1.0 + k.block_l / 100 + k.num_warps / 1000


@pytest.mark.interp
def test_a_fast_wrong_kernel_never_wins(monkeypatch):
    real_forward = triton_backend.forward
    x = make_inputs(SHAPE, device="cpu", seed=3)
    call = autotune.normalize(*x, delta_softplus=True)
    fwd, _ = autotune.plan(triton_backend, call.spec, 4, 40, 3, 1)
    fastest = fwd[-1]  # not the default (which the backward candidates' checks also run)
    assert fastest != fwd[0]
    bad = {"n": 0}

    def corrupt(call, cfg, save_ckpt):
        out, last, ckpt = real_forward(call, cfg, save_ckpt)
        if cfg.fwd == fastest:
            bad["n"] += 1
            out = out + 1e-2
        return out, last, ckpt

    monkeypatch.setattr(triton_backend, "forward", corrupt)
    monkeypatch.setattr(autotune, "cuda_event_timer", None)

    def timer(fn):  # the corrupted candidate would be by far the fastest
        if fn.func is corrupt:
            return 0.5 if fn.args[1].fwd == fastest else 1.0 + fn.args[1].fwd.block_l / 100
        return 5.0

    rec = autotune.tune(x, True, timer=timer, device=FAKE_GPU, max_fwd=3, max_bwd=1)
    assert bad["n"] >= 1
    wrong = [r for r in rec["candidates"] if r["kind"] == "fwd" and r["config"] ==
             fastest.__dict__]
    assert wrong and wrong[0]["ms"] is None and "out" in wrong[0]["error"]
    assert rec["config"]["fwd"] != fastest.__dict__


@pytest.mark.interp
def test_compile_failure_marks_candidate_invalid_and_tuning_goes_on(monkeypatch):
    real_kernel = triton_backend.kernel
    call = autotune.normalize(*make_inputs(SHAPE, device="cpu", seed=3), delta_softplus=True)
    _, bwd = autotune.plan(triton_backend, call.spec, 4, 40, 3, 3)
    victim = bwd[-1][1]  # a backward candidate other than the default
    assert victim != bwd[0][1]

    def flaky(spec, cfg, kind):
        if kind == "bwd" and cfg == victim:
            raise RuntimeError("simulated compile error")
        return real_kernel(spec, cfg, kind)

    monkeypatch.setattr(triton_backend, "kernel", flaky)
    rec = tune_small(save=False)
    errs = [r for r in rec["candidates"] if r["error"]]
    assert len(errs) == 1 and "simulated compile error" in errs[0]["error"]
    assert rec["config"]["bwd"] != errs[0]["config"]


def record(spec_key="ss1-n16-bf16", seqlen=2048, rows=8192, device="FakeGPU 80GB",
           thash="h1", block_d=2):
    return {"backend": "triton", "template_hash": thash, "spec_key": spec_key,
            "bucket": {"seqlen": seqlen, "rows": rows}, "device": dict(FAKE_GPU, name=device),
            "config": {"chunk_len": 64, "fwd": {"block_d": block_d, "block_l": 64,
                                                "num_warps": 2, "num_stages": 1},
                       "bwd": {"block_d": 1, "block_l": 32, "num_warps": 2, "num_stages": 1}}}


def test_bucket_is_coarse():
    assert tunecache.bucket(8, 1536, 2048) == tunecache.bucket(8, 1536, 1100)
    assert tunecache.bucket(8, 1536, 2048) != tunecache.bucket(8, 1536, 2049)
    assert tunecache.bucket(4, 4096, 4096)["rows"] == 16384


def test_lookup_exact_then_nearest_then_default():
    recs = [record(seqlen=2048, block_d=1), record(seqlen=8192, block_d=4),
            record(seqlen=2048, thash="old", block_d=8), record(device="OtherGPU", block_d=16)]
    hit, how = tunecache.lookup("FakeGPU 80GB", "triton", "h1", "ss1-n16-bf16",
                                {"seqlen": 2048, "rows": 8192}, recs)
    assert how == "exact" and hit["config"]["fwd"]["block_d"] == 1
    hit, how = tunecache.lookup("FakeGPU 80GB", "triton", "h1", "ss1-n16-bf16",
                                {"seqlen": 16384, "rows": 8192}, recs)
    assert how == "nearest" and hit["config"]["fwd"]["block_d"] == 4
    # a template change invalidates only its own records: hash "old" is never returned
    hit, how = tunecache.lookup("FakeGPU 80GB", "triton", "old", "ss1-n16-bf16",
                                {"seqlen": 2048, "rows": 8192}, recs)
    assert how == "exact" and hit["config"]["fwd"]["block_d"] == 8
    assert tunecache.lookup("FakeGPU 80GB", "triton", "h2", "ss1-n16-bf16",
                            {"seqlen": 2048, "rows": 8192}, recs) == (None, "default")
    assert tunecache.lookup("H200", "triton", "h1", "ss1-n16-bf16",
                            {"seqlen": 2048, "rows": 8192}, recs) == (None, "default")


def test_cached_choice_reads_records_without_timing(monkeypatch):
    from ssmgen import ScanSpec, device

    monkeypatch.setattr(device, "info", lambda index=0: FAKE_GPU)
    monkeypatch.setattr(autotune, "cuda_event_timer", None)  # any timing run would fail
    spec = ScanSpec(d_state=16, dtype="bfloat16")
    r = record(spec_key=autotune.tuning_key(spec), thash=autotune.template_hash("triton"))
    assert tunecache.write_records([r])
    fn = autotune._cached_choice.__wrapped__ if hasattr(autotune._cached_choice, "__wrapped__") \
        else autotune._cached_choice
    how, chunk, enc = fn("triton", spec.to_json(), 0, 8, 1024, 2048).split("|")
    assert (how, int(chunk)) == ("exact", 64)
    cfg = triton_backend.ScanConfig.decode(enc)
    assert cfg.fwd == triton_backend.KernelConfig(2, 64, 2, 1)
    how, _, _ = fn("triton", spec.to_json(), 0, 8, 1024, 100000).split("|")
    assert how == "nearest"
    how, chunk, enc = fn("triton", spec.replace(d_state=8).to_json(), 0, 8, 1024, 2048).split("|")
    assert how == "default"
    assert enc == triton_backend.default_config(spec.replace(d_state=8)).encode()


def test_records_persist_across_processes(cache_dir):
    code = ("import json, sys; from ssmgen import tunecache; "
            "tunecache.write_records([json.loads(sys.argv[1])])")
    subprocess.run([sys.executable, "-c", code, json.dumps(record())], check=True,
                   env=dict(os.environ, SSMGEN_CACHE_DIR=str(cache_dir)))
    assert [r["spec_key"] for r in tunecache.all_records()] == ["ss1-n16-bf16"]


def test_concurrent_writers_lose_nothing(cache_dir):
    code = ("import sys; from ssmgen import tunecache\n"
            "sys.path.insert(0, sys.argv[2]); from test_autotune import record\n"
            "for i in range(25):\n"
            "    tunecache.write_records([record(spec_key=f'k{sys.argv[1]}-{i}')])\n")
    here = os.path.dirname(__file__)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(p), here],
                              env=dict(os.environ, SSMGEN_CACHE_DIR=str(cache_dir)))
             for p in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    keys = {r["spec_key"] for r in tunecache.read_file(tunecache.user_file())}
    assert keys == {f"k{p}-{i}" for p in range(4) for i in range(25)}


def test_corrupt_file_warns_is_ignored_and_kept_aside(cache_dir):
    f = tunecache.user_file()
    f.parent.mkdir(parents=True)
    f.write_text('{"format": 1, "records": [')
    with pytest.warns(UserWarning, match="corrupt"):
        assert tunecache.all_records() == []
    with pytest.warns(UserWarning, match="moved it to"):
        assert tunecache.write_records([record()])
    assert len(tunecache.read_file(f)) == 1
    assert any(p.name.startswith("records.json.bad-") for p in f.parent.iterdir())


def test_foreign_format_and_malformed_records_are_ignored(cache_dir):
    f = tunecache.user_file()
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"format": 99, "records": [record()]}))
    with pytest.warns(UserWarning, match="format 99"):
        assert tunecache.read_file(f) == []
    f.write_text(json.dumps({"format": 1, "records": [record(), {"spec_key": 1}]}))
    with pytest.warns(UserWarning, match="1 malformed"):
        assert len(tunecache.read_file(f)) == 1


def test_unwritable_cache_warns_and_goes_on(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    blocker = ro / "autotune"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(ro))
    with pytest.warns(UserWarning, match="cannot write tuning cache"):
        assert tunecache.write_records([record()]) is False


def test_cli_cache_export_import_merge_clear(tmp_path, cache_dir):
    env = dict(os.environ, SSMGEN_CACHE_DIR=str(cache_dir))
    run = lambda *a: subprocess.run([sys.executable, "-m", "ssmgen", "cache", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"format": 1, "records": [record(spec_key="ka")]}))
    b.write_text(json.dumps({"format": 1, "records": [record(spec_key="kb")]}))
    assert run("import", str(a)).returncode == 0
    assert run("merge", str(b)).returncode == 0
    ls = run("ls").stdout
    assert "ka" in ls and "kb" in ls
    assert '"spec_key": "kb"' in run("show", "kb").stdout
    out = tmp_path / "out.json"
    assert run("export", str(out)).returncode == 0
    assert {r["spec_key"] for r in json.loads(out.read_text())["records"]} == {"ka", "kb"}
    assert run("clear").returncode == 0
    assert run("ls").stdout == ""


def test_shipped_records_load_and_are_found(monkeypatch):
    monkeypatch.setenv("SSMGEN_SHIPPED_CACHE", "1")
    tunecache._cache.clear()
    files = tunecache.shipped_files()
    assert any(f.name == "nvidia_h100_80gb_hbm3.json" for f in files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a shipped file must parse without a warning
        recs = tunecache.all_records()
    h100 = [r for r in recs if r["device"]["name"] == "NVIDIA H100 80GB HBM3"]
    assert len(h100) >= 7
    for r in h100:
        hit, how = tunecache.lookup(r["device"]["name"], r["backend"], r["template_hash"],
                                    r["spec_key"], r["bucket"])
        assert how == "exact" and hit["config"] == r["config"]
    # the shipped scan records were tuned with the templates as they are now (a template
    # change without re-tuning would silently leave every call on default configs)
    for backend in ("triton", "cuda"):
        assert any(r["backend"] == backend and r["template_hash"] == autotune.template_hash(backend)
                   for r in h100), f"no shipped {backend} record matches the current templates"


def test_pick_prefers_longer_chunks_only_within_the_memory_slack():
    """A backward with longer chunks (fewer fp32 checkpoints) wins when it is within
    MEMORY_SLACK of the fastest; otherwise the fastest wins. The forward must fit the chunk."""
    fwd_cls = triton_backend.KernelConfig
    row = lambda kind, chunk, ms, bl=16: dict(kind=kind, chunk_len=chunk, ms=ms, error=None,  # noqa: E731
                                            config=dict(block_d=4, block_l=bl, num_warps=4,
                                                        num_stages=1))
    s = autotune.MEMORY_SLACK
    rows = [row("fwd", 64, 1.0), row("fwd", 64, 0.5, bl=128), row("bwd", 64, 10.0),
            row("bwd", 128, 10.0 * (1 + s / 2)), row("bwd", 256, 10.0 * (1 + 2 * s))]
    f, b = autotune.pick(rows, fwd_cls)
    assert b["chunk_len"] == 128 and f["config"]["block_l"] == 128
    rows[3]["ms"] = 10.0 * (1 + 2 * s)
    f, b = autotune.pick(rows, fwd_cls)
    assert b["chunk_len"] == 64 and f["ms"] == 1.0   # block_l 128 does not fit chunk 64
    rows[2]["ms"] = None   # the fastest invalid: the next one counts
    assert autotune.pick(rows, fwd_cls)[1]["chunk_len"] == 256
