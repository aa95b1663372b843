"""Cache and compile faults (issue: Reliability, item 2): the program keeps working (a default
config, another compiler, another folder, the other backend or the reference) with one clear
warning, and loses no valid record.

Faults injected: tuning-cache files that are empty, truncated, binary, deeply nested, of another
format or with malformed records or unusable configs; a cache path that is a directory, a file in
the way of the cache folder, a read-only folder (skipped as root); writers and readers in
several processes at once, and two processes tuning at once; rendered modules truncated on disk
or in an unwritable folder; an unwritable Triton cache directory; an NVRTC that loads but cannot
compile, no NVRTC and no nvcc; a template that fails to compile. Tests marked xfail are known
gaps whose fix belongs in ssmgen/ops.py (outside this suite author's files): each names it."""
import json
import os
import re
import subprocess
import sys
import textwrap
import types
import warnings

import pytest
import torch

import ssmgen
from ssmgen import autotune, device, ops, render, tunecache
from ssmgen.backends import cuda_runtime as cr, triton_backend
from ssmgen.reference import selective_scan_ref
from ssmgen.spec import ScanSpec

FAKE_GPU = {"name": "FakeGPU 80GB", "cc": "9.0", "sm_count": 132, "memory_gb": 80.0,
            "driver": "0.0", "cuda": "0.0"}
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SSMGEN_SHIPPED_CACHE", "0")
    monkeypatch.setattr(tunecache, "_unsaved", {})
    monkeypatch.setattr(tunecache, "_write_warned", set())
    monkeypatch.setattr(autotune, "_warned_records", set())
    monkeypatch.setattr(render, "_fallback", {})
    monkeypatch.setattr(render, "_triton_cache_ok", set())
    monkeypatch.setattr(device, "info", lambda index=0: FAKE_GPU)
    tunecache._cache.clear()
    yield tmp_path / "cache"
    tunecache._cache.clear()


def ssm_warnings(caught):
    return [str(w.message) for w in caught if str(w.message).startswith("ssmgen:")]


class Once:
    """Records the ssmgen warnings raised inside the block."""

    def __enter__(self):
        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)

    @property
    def messages(self):
        return ssm_warnings(self.caught)


def record(spec_key="ss1-n16-bf16", seqlen=2048, rows=8192, thash="h1", block_d=2, **over):
    r = {"backend": "triton", "template_hash": thash, "spec_key": spec_key,
         "bucket": {"seqlen": seqlen, "rows": rows}, "device": dict(FAKE_GPU),
         "config": {"chunk_len": 64, "fwd": {"block_d": block_d, "block_l": 64, "num_warps": 2,
                                             "num_stages": 1},
                    "bwd": {"block_d": 1, "block_l": 32, "num_warps": 2, "num_stages": 1}}}
    r.update(over)
    return r


def cached_choice(*args):
    fn = getattr(autotune._cached_choice, "__wrapped__", autotune._cached_choice)
    return fn(*args).split("|")


def ids(recs):
    return sorted(tunecache.record_id(r) for r in recs)


# -- the tuning cache file ---------------------------------------------------------------------
CORRUPT = [  # (label, bytes, the warning)
    ("empty file", b"", r"is corrupt"),
    ("truncated", b'{"format": 1, "records": [{"backend": "tri', r"is corrupt"),
    ("binary garbage", bytes(range(256)) * 4, r"is corrupt \(not UTF-8"),
    ("NUL bytes", b"\0" * 64, r"is corrupt"),
    ("deeply nested", b"[" * 200000, r"is corrupt"),
    ("a JSON list", b"[]", r"has format 'list'"),
    ("JSON null", b"null", r"has format 'NoneType'"),
    ("another format", json.dumps({"format": 99, "records": [record()]}).encode(),
     r"has format 99"),
    ("no format", json.dumps({"records": [record()]}).encode(), r"has format None"),
    ("records not a list", b'{"format": 1, "records": 5}', r"records are a int"),
    ("records null", b'{"format": 1, "records": null}', r"records are a NoneType"),
]


@pytest.mark.parametrize("label, data, warning", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_cache_file_warns_once_falls_back_and_is_kept_aside(label, data, warning):
    f = tunecache.user_file()
    f.parent.mkdir(parents=True)
    f.write_bytes(data)
    with Once() as w:
        assert tunecache.all_records() == []
        assert tunecache.all_records() == []  # memoized: no second warning
        spec = ScanSpec(d_state=16, dtype="bfloat16")
        how, chunk, enc = cached_choice("triton", spec.to_json(), 0, 8, 1024, 2048)
    assert how == "default"
    assert len(w.messages) == 1 and re.search(warning, w.messages[0]), w.messages
    with Once() as w:
        assert tunecache.write_records([record()])
    assert any("moved it to" in m for m in w.messages)
    assert ids(tunecache.read_file(f)) == ids([record()])
    aside = [p for p in f.parent.iterdir() if p.name.startswith("records.json.bad-")]
    assert len(aside) == 1 and aside[0].read_bytes() == data  # its bytes, untouched


def test_files_kept_aside_never_overwrite_each_other():
    """Three corrupt files within one second: three files kept aside."""
    f = tunecache.user_file()
    f.parent.mkdir(parents=True)
    for i in range(3):
        f.write_bytes(b"garbage %d" % i)  # (the test's own write destroys the record before)
        with Once():
            assert tunecache.write_records([record(spec_key=f"k{i}")])
        assert ids(tunecache.read_file(f)) == ids([record(spec_key=f"k{i}")])
    aside = sorted(p.read_bytes() for p in f.parent.iterdir() if ".bad-" in p.name)
    assert aside == [b"garbage 0", b"garbage 1", b"garbage 2"]


MALFORMED = [
    ("bucket 0", record(spec_key="m1", seqlen=0)),
    ("bucket not a power of two", record(spec_key="m2", rows=3000)),
    ("bucket a string", record(spec_key="m3", seqlen="2048")),
    ("bucket a bool", record(spec_key="m3b", seqlen=True)),
    ("device not a dict", record(spec_key="m4", device="FakeGPU")),
    ("config a list", record(spec_key="m5", config=[1, 2])),
    ("backend a number", record(spec_key="m6", backend=7)),
    ("no spec_key", {k: v for k, v in record().items() if k != "spec_key"}),
    ("a string", "record"),
    ("null", None),
    ("a list", [1, 2, 3]),
]


def test_malformed_records_are_skipped_and_valid_ones_kept():
    good = [record(spec_key="g1"), record(spec_key="g2", seqlen=1024)]
    f = tunecache.user_file()
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"format": 1, "records": good[:1] + [m for _, m in MALFORMED]
                             + good[1:]}))
    with Once() as w:
        assert ids(tunecache.all_records()) == ids(good)
        hit, how = tunecache.lookup("FakeGPU 80GB", "triton", "h1", "g2",
                                    {"seqlen": 4096, "rows": 8192})  # no log2 of a bad bucket
    assert how == "nearest" and hit["spec_key"] == "g2"
    assert w.messages == [f"ssmgen: {len(MALFORMED)} malformed records in {f} ignored"]
    with Once() as w:
        assert tunecache.write_records([record(spec_key="g3")])
    assert any("rewritten without them" in m for m in w.messages), w.messages
    assert ids(tunecache.read_file(f)) == ids(good + [record(spec_key="g3")])


UNUSABLE = [  # valid records whose config this ssmgen cannot run
    ("block_l not a power of two", {"fwd": {"block_d": 2, "block_l": 48, "num_warps": 2}}),
    ("an unknown field", {"fwd": {"block_size": 4}}),
    ("chunk_len 48", {"chunk_len": 48}),
    ("no chunk_len", {"chunk_len": None}),
    ("block_l past chunk_len", {"chunk_len": 16}),
    ("bwd a string", {"bwd": "fast"}),
]


@pytest.mark.parametrize("label, change", UNUSABLE, ids=[u[0] for u in UNUSABLE])
def test_record_with_unusable_config_falls_back_to_the_default(label, change):
    spec = ScanSpec(d_state=16, dtype="bfloat16")
    r = record(spec_key=autotune.tuning_key(spec), thash=autotune.template_hash("triton"))
    cfg = dict(r["config"], **change)
    r["config"] = {k: v for k, v in cfg.items() if v is not None}
    assert tunecache.write_records([r])
    with Once() as w:
        for _ in range(3):
            how, chunk, enc = cached_choice("triton", spec.to_json(), 0, 8, 1024, 2048)
            assert how == "default"
            assert enc == triton_backend.default_config(spec.replace(chunk_len=int(chunk))).encode()
    assert len(w.messages) == 1 and "unusable config" in w.messages[0], w.messages


def test_step_record_with_unusable_config_falls_back_to_the_default():
    spec = ScanSpec(d_state=16, dtype="bfloat16")
    r = record(spec_key=autotune.step_key(spec), thash=autotune.step_template_hash("triton"),
               seqlen=1, rows=1024, config={"step": {"block_d": 3, "num_warps": 4}})
    assert tunecache.write_records([r])
    with Once() as w:
        assert autotune._lookup_step("triton", spec, 0, 1024, tunecache.all_records()) is None
    assert len(w.messages) == 1 and "unusable config" in w.messages[0]
    r["config"] = {"nothing": 1}
    assert tunecache.write_records([r])
    with Once():
        assert autotune._lookup_step("triton", spec, 0, 1024, tunecache.all_records()) is None


# -- a cache that cannot be written or read ----------------------------------------------------
def test_unwritable_cache_keeps_records_in_memory_and_saves_them_later(tmp_path, monkeypatch):
    root = tmp_path / "blocked"
    root.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(root))
    tunecache._cache.clear()
    with Once() as w:
        assert tunecache.write_records([record(spec_key="a")]) is False
        assert tunecache.write_records([record(spec_key="b")]) is False
    assert len(w.messages) == 1 and "cannot write tuning cache" in w.messages[0]
    # this process still finds what it tuned (SSMGEN_AUTOTUNE=1 does not re-tune every call)
    assert ids(tunecache.all_records()) == ids([record(spec_key="a"), record(spec_key="b")])
    hit, how = tunecache.lookup("FakeGPU 80GB", "triton", "h1", "b",
                                {"seqlen": 2048, "rows": 8192})
    assert how == "exact"
    root.unlink()  # the folder can be made now: the next write saves everything
    with Once() as w:
        assert tunecache.write_records([record(spec_key="c")]) is True
    assert w.messages == []
    want = ids([record(spec_key=k) for k in "abc"])
    assert ids(tunecache.read_file(tunecache.user_file())) == want
    assert ids(tunecache.all_records()) == want


def test_cache_path_that_is_a_directory():
    f = tunecache.user_file()
    (f / "inner").mkdir(parents=True)
    with Once() as w:
        assert tunecache.all_records() == []
    assert len(w.messages) == 1 and "cannot read tuning cache" in w.messages[0]
    with Once():
        assert tunecache.write_records([record()])
    assert ids(tunecache.read_file(f)) == ids([record()])
    assert any(p.is_dir() and ".bad-" in p.name for p in f.parent.iterdir())


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_cache_folder_still_serves_its_records():
    f = tunecache.user_file()
    assert tunecache.write_records([record(spec_key="old")])
    os.chmod(f.parent, 0o555)
    try:
        tunecache._cache.clear()
        with Once() as w:
            assert tunecache.write_records([record(spec_key="new")]) is False
        assert len(w.messages) == 1
        assert ids(tunecache.all_records()) == ids([record(spec_key="old"),
                                                    record(spec_key="new")])
    finally:
        os.chmod(f.parent, 0o755)


# -- several processes at once -----------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys, warnings
    warnings.simplefilter("error")  # any warning (a torn file) fails the writer
    sys.path.insert(0, sys.argv[2])
    from ssmgen import tunecache
    from test_cache_faults import record
    for i in range(15):
        assert tunecache.write_records([record(spec_key=f"w{sys.argv[1]}-{i}")])
""")
READER = textwrap.dedent("""
    import os, sys, warnings
    warnings.simplefilter("error")  # a reader must never see a half-written file
    from ssmgen import tunecache
    seen, reads = set(), 0
    while not os.path.exists(sys.argv[1]) or reads < 5:
        tunecache._cache.clear()
        now = {r["spec_key"] for r in tunecache.all_records()}
        assert seen <= now, f"records disappeared: {sorted(seen - now)}"
        seen, reads = now, reads + 1
    print(reads, len(seen))
""")


def test_concurrent_writers_and_readers_lose_nothing_and_see_no_torn_file(cache_dir, tmp_path):
    env = dict(os.environ, SSMGEN_CACHE_DIR=str(cache_dir))
    done = tmp_path / "writers-done"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(done)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(p), HERE], env=env,
                                stderr=subprocess.PIPE, text=True) for p in range(3)]
    errs = [w.communicate(timeout=120)[1] for w in writers]
    done.write_text("")
    out, err = reader.communicate(timeout=120)
    assert all(w.returncode == 0 for w in writers), errs
    assert reader.returncode == 0, err
    assert int(out.split()[0]) >= 5
    keys = {r["spec_key"] for r in tunecache.read_file(tunecache.user_file())}
    assert keys == {f"w{p}-{i}" for p in range(3) for i in range(15)}
    assert not [p for p in tunecache.user_file().parent.iterdir() if p.name.startswith(".rec")]


TUNER = textwrap.dedent("""
    import sys
    from ssmgen import autotune
    from ssmgen.suite import make_inputs
    shape = {"batch": 1, "dim": 2, "seqlen": int(sys.argv[1]), "d_state": 2, "groups": 1,
             "dtype": "float32", "A": "real"}
    autotune.tune(make_inputs(shape, device="cpu", seed=1), True, timer=lambda fn: 1.0,
                  device={"name": "FakeGPU 80GB"}, max_fwd=1, max_bwd=1)
""")


@pytest.mark.interp
def test_two_processes_tuning_at_once_both_keep_their_record(cache_dir):
    env = dict(os.environ, SSMGEN_CACHE_DIR=str(cache_dir), TRITON_INTERPRET="1")
    procs = [subprocess.Popen([sys.executable, "-c", TUNER, str(L)], env=env,
                              stderr=subprocess.PIPE, text=True) for L in (20, 70)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    recs = tunecache.read_file(tunecache.user_file())
    assert sorted(r["bucket"]["seqlen"] for r in recs) == [32, 128]


# -- the rendered-module cache -----------------------------------------------------------------
def _scan_inputs():
    g = torch.Generator().manual_seed(0)
    return dict(u=torch.randn(1, 2, 8, generator=g), delta=torch.rand(1, 2, 8, generator=g),
                A=-torch.rand(2, 2, generator=g), B=torch.randn(1, 2, 8, generator=g),
                C=torch.randn(1, 2, 8, generator=g))


@pytest.mark.interp
def test_unwritable_kernel_cache_falls_back_to_a_temporary_folder(tmp_path, monkeypatch):
    root = tmp_path / "blocked"
    root.write_text("not a folder")
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(root))
    triton_backend.kernel.cache_clear()  # render and import anew
    a = _scan_inputs()
    with Once() as w:
        out = ssmgen.selective_scan(**a, backend="triton",
                                    config={"chunk_len": 16, "block_l": 8, "block_d": 1})
        out2 = ssmgen.selective_scan(**a, backend="triton", delta_softplus=True,
                                     config={"chunk_len": 16, "block_l": 8, "block_d": 1})
    assert len(w.messages) == 1 and "cannot write the cache directory" in w.messages[0]
    assert torch.allclose(out.double(), selective_scan_ref(**a), atol=1e-5)
    assert torch.allclose(out2.double(), selective_scan_ref(**a, delta_softplus=True), atol=1e-5)
    fb = render._fallback[str(root)]
    assert any(fb.joinpath("triton").iterdir())


def test_truncated_cached_module_is_rewritten():
    src = "VALUE = 41 + 1\n" + "# padding\n" * 50
    path = render.write_source("triton", "faulty_mod", src)
    path.write_text(src[:7])  # truncated by a crash or a full disk: "VALUE ="
    render._modules.pop(path, None)
    with Once() as w:
        mod = render.load_module("triton", "faulty_mod", src)
    assert mod.VALUE == 42 and path.read_text() == src
    assert len(w.messages) == 1 and "does not hold the source" in w.messages[0]


def test_read_only_prefilled_cache_is_used_without_writing(monkeypatch):
    src = "VALUE = 7\n"
    path = render.write_source("triton", "prefilled", src)

    def refuse(*a, **k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(render, "_atomic_write", refuse)
    with Once() as w:
        assert render.write_source("triton", "prefilled", src) == path
    assert w.messages == []


def test_unwritable_triton_cache_dir_is_redirected_once(tmp_path, monkeypatch):
    """Triton compiles into TRITON_CACHE_DIR and fails there if it cannot write: ssmgen points it
    at a temporary folder first. (The interpreter compiles nothing: there the check is skipped;
    on a GPU the redirect is what lets the first kernel compile.)"""
    import triton

    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = str(blocker / "triton-cache")
    monkeypatch.setenv("TRITON_CACHE_DIR", bad)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delitem(vars(triton.knobs.cache), "dir", raising=False)
    with Once() as w:
        render.ensure_triton_cache()
        render.ensure_triton_cache()
    new = os.environ["TRITON_CACHE_DIR"]
    assert new != bad and os.path.isdir(new) and triton.knobs.cache.dir == new
    assert len(w.messages) == 1 and "Triton's cache directory" in w.messages[0]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("TRITON_CACHE_DIR", bad)
    with Once() as w:
        render.ensure_triton_cache()  # interpreter: nothing compiled, nothing to redirect
    assert w.messages == [] and os.environ["TRITON_CACHE_DIR"] == bad


# -- NVRTC and nvcc ------------------------------------------------------------------------------
class FakeNVRTC:
    """CuPy's nvrtc binding as far as cuda_runtime uses it; compileProgram fails with status."""

    class NVRTCError(RuntimeError):
        def __init__(self, status):
            super().__init__(f"NVRTC_ERROR ({status})")
            self.status = status

    def __init__(self, status):
        self.status = status

    def getVersion(self):
        return (13, 0)

    def createProgram(self, *a):
        return object()

    def compileProgram(self, prog, opts):
        raise self.NVRTCError(self.status)

    def getProgramLog(self, prog):
        return "libnvrtc-builtins.so: cannot open shared object file" if self.status != 6 \
            else "kernel.cu(3): error: identifier 'oops' is undefined"

    def getCUBIN(self, prog):
        return b"never"

    def destroyProgram(self, prog):
        pass


@pytest.fixture
def fake_toolchain(monkeypatch):
    """NVRTC / nvcc stand-ins: nvcc 'compiles' to marked bytes; the cubin key follows the
    compiler in use. Returns a function (nvrtc status or None, nvcc present) -> calls list."""
    calls = []

    def setup(status, nvcc=True):
        nv = FakeNVRTC(status) if status is not None else None
        monkeypatch.setattr(cr, "_nvrtc", lambda: nv)
        monkeypatch.setattr(cr, "_nvrtc_failed", [])
        monkeypatch.setattr(cr, "nvcc_path", lambda: "/fake/bin/nvcc" if nvcc else None)
        monkeypatch.setattr(cr, "compiler_version", lambda: "nvrtc-13.0"
                            if cr._nvrtc_usable() is not None else "nvcc-13.0")
        monkeypatch.setattr(cr, "pack_dirs", lambda: [])

        def nvcc_compile(src_path, arch, extra=(), verbose=False):
            if not nvcc:
                raise cr.CudaCompileError("nvcc not found (and NVRTC unavailable)")
            calls.append(("nvcc", src_path.name, arch))
            return b"\x7fELF nvcc " + src_path.name.encode(), ""

        monkeypatch.setattr(cr, "_compile_nvcc", nvcc_compile)
        return calls
    return setup


def test_broken_nvrtc_falls_back_to_nvcc_with_one_warning(fake_toolchain):
    calls = fake_toolchain(status=7)  # NVRTC_ERROR_BUILTIN_OPERATION_FAILURE
    with Once() as w:
        p1 = cr.compile_cubin("k_one", "extern \"C\" __global__ void k_one() {}\n", 90)
        p2 = cr.compile_cubin("k_two", "extern \"C\" __global__ void k_two() {}\n", 90)
    assert len(w.messages) == 1 and "NVRTC cannot compile here" in w.messages[0]
    assert "compiling with nvcc" in w.messages[0] and "builtins" in w.messages[0]
    assert [c[0] for c in calls] == ["nvcc", "nvcc"] and cr.compiler() == "nvcc"
    assert p1.read_bytes().startswith(b"\x7fELF nvcc") and p2.exists()
    assert p1 == cr.cubin_path("k_one", "extern \"C\" __global__ void k_one() {}\n", 90)


def test_a_source_error_under_nvrtc_is_an_error_not_a_fallback(fake_toolchain):
    calls = fake_toolchain(status=6)  # NVRTC_ERROR_COMPILATION: the source is at fault
    with Once() as w:
        with pytest.raises(cr.CudaCompileError, match=r"identifier 'oops' is undefined"):
            cr.compile_cubin("k_bad", "oops\n", 90)
    assert w.messages == [] and calls == [] and cr.compiler() == "nvrtc"


@pytest.fixture
def fake_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    cr.available.cache_clear()
    yield
    cr.available.cache_clear()


def test_broken_nvrtc_without_nvcc_leaves_the_cuda_backend(fake_toolchain, fake_cupy):
    fake_toolchain(status=7, nvcc=False)
    assert cr.available() and ops.pick_backend(None, torch.device("cuda", 0)) == "cuda"
    with Once() as w:
        with pytest.raises(cr.CudaCompileError, match=r"nvcc not found"):
            cr.compile_cubin("k_one", "x\n", 90)
    assert len(w.messages) == 1 and "nvcc is not found" in w.messages[0]
    # from now on this process picks Triton for CUDA tensors
    assert not cr.available() and ops.pick_backend(None, torch.device("cuda", 0)) == "triton"


def test_no_nvrtc_no_nvcc_no_pack_picks_triton(fake_toolchain, fake_cupy):
    fake_toolchain(status=None, nvcc=False)
    assert not cr.available()
    assert ops.pick_backend(None, torch.device("cuda", 0)) == "triton"
    with pytest.raises(cr.CudaCompileError, match=r"nvcc not found"):
        cr.compile_cubin("k_one", "x\n", 90)


@pytest.mark.skipif(cr.nvcc_path() is None, reason="nvcc not found")
def test_broken_nvrtc_real_nvcc_compiles_a_step_kernel(monkeypatch):
    from ssmgen.backends import cuda_backend as cb

    monkeypatch.setattr(cr, "_nvrtc", lambda: FakeNVRTC(7))
    monkeypatch.setattr(cr, "_nvrtc_failed", [])
    cr.compiler_version.cache_clear()
    try:
        s = ScanSpec(d_state=4)
        k = cb.default_step_config(s)
        with Once() as w:
            p = cr.compile_cubin(cb.step_kernel_name(s, k), cb.render_step(s, k), 90)
        assert p.read_bytes()[:4] == b"\x7fELF" and len(w.messages) == 1
        assert cr.compiler_version().startswith("nvcc-")
    finally:
        cr.compiler_version.cache_clear()


def test_unwritable_cache_cuda_cubin_goes_to_the_fallback_folder(fake_toolchain, tmp_path,
                                                                 monkeypatch):
    fake_toolchain(status=None)  # nvcc only
    root = tmp_path / "blocked"
    root.write_text("not a folder")
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(root))
    with Once() as w:
        p = cr.compile_cubin("k_one", "x\n", 90)
    assert p.read_bytes().startswith(b"\x7fELF") and len(w.messages) == 1


def test_truncated_cached_cubin_is_compiled_again(fake_toolchain):
    calls = fake_toolchain(status=None)
    p = cr.compile_cubin("k_one", "x\n", 90)
    p.write_bytes(b"\x7fE")  # a crash mid-write by some other tool, a full disk
    assert cr.compile_cubin("k_one", "x\n", 90).read_bytes().startswith(b"\x7fELF nvcc")
    assert len(calls) == 2


# -- a template that fails to compile ----------------------------------------------------------
@pytest.fixture
def broken_template(monkeypatch):
    def fail(spec, cfg, kind):
        raise SyntaxError(f"simulated: rendered {kind} kernel does not compile")
    monkeypatch.setattr(triton_backend, "kernel", fail)


@pytest.mark.interp
def test_broken_template_with_an_explicit_backend_raises(broken_template):
    """A backend the caller named is not silently replaced (the tuner relies on that to mark a
    candidate invalid; test_autotune's compile-failure test)."""
    with pytest.raises(SyntaxError, match="simulated"):
        ssmgen.selective_scan(**_scan_inputs(), backend="triton")


@pytest.mark.interp
def test_broken_template_with_the_default_backend_falls_back_with_one_warning(broken_template):
    a = _scan_inputs()
    with Once() as w:
        out = ssmgen.selective_scan(**a)
        out2 = ssmgen.selective_scan(**a)
    assert torch.allclose(out.double(), selective_scan_ref(**a), atol=1e-5)
    assert torch.equal(out, out2)
    assert len(w.messages) == 1
