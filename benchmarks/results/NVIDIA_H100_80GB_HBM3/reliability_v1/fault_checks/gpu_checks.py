"""GPU evidence for the reliability audit: each check runs in its own process (env, crashes)."""
import json, os, subprocess, sys, tempfile, textwrap

PRE = textwrap.dedent("""
import os, sys, json, warnings, torch
warnings.simplefilter("always")
import ssmgen
from ssmgen.reference import selective_scan_ref
res = {}
def inputs(b=1, d=8, L=40, N=4, dev="cuda", seed=0):
    g = torch.Generator().manual_seed(seed)
    t = dict(u=torch.randn(b, d, L, generator=g), delta=0.5 * torch.rand(b, d, L, generator=g),
             A=-0.5 * torch.rand(d, N, generator=g), B=torch.randn(b, N, L, generator=g),
             C=torch.randn(b, N, L, generator=g), D=torch.randn(d, generator=g))
    return {k: v.to(dev) for k, v in t.items()}
def err(a, b):
    return float((a.double() - b.double()).abs().max())
""")

CHECKS = {
"triton_unwritable_TRITON_CACHE_DIR": ({"TRITON_CACHE_DIR": "{blk}/sub"}, """
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    a = inputs(); out = ssmgen.selective_scan(**a, backend="triton")
res["err"] = err(out, selective_scan_ref(**a)); res["warnings"] = [str(x.message)[:160] for x in w if "ssmgen" in str(x.message)]
"""),
"triton_unwritable_TRITON_CACHE_DIR_without_the_redirect": ({"TRITON_CACHE_DIR": "{blk}/sub"}, """
from ssmgen import render; render.ensure_triton_cache = lambda: None
a = inputs()
try:
    out = ssmgen.selective_scan(**a, backend="triton"); res["err"] = err(out, selective_scan_ref(**a))
except Exception as e:
    res["error"] = type(e).__name__ + ": " + str(e)[:200]
"""),
"unwritable_SSMGEN_CACHE_DIR": ({"SSMGEN_CACHE_DIR": "{blk}"}, """
for be in ("triton", "cuda"):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = inputs(seed=1)
        try:
            out = ssmgen.selective_scan(**a, backend=be); res[be] = {"err": err(out, selective_scan_ref(**a))}
        except Exception as e:
            res[be] = {"error": type(e).__name__ + ": " + str(e)[:200]}
    res[be]["warnings"] = [str(x.message)[:120] for x in w if "ssmgen" in str(x.message)]
"""),
"nvrtc_missing_SSMGEN_NVRTC_0": ({"SSMGEN_NVRTC": "0"}, """
from ssmgen.backends import cuda_runtime as cr
a = inputs(seed=2); out = ssmgen.selective_scan(**a, backend="cuda")
res.update(compiler=cr.compiler(), version=cr.compiler_version(), err=err(out, selective_scan_ref(**a)),
           auto=ssmgen.ops.pick_backend(None, a["u"].device))
"""),
"nvrtc_broken_builtins": ({}, """
from ssmgen.backends import cuda_runtime as cr
nv = cr._nvrtc(); res["nvrtc_loaded"] = nv is not None
def broken(prog, opts): raise nv.NVRTCError(7)  # NVRTC_ERROR_BUILTIN_OPERATION_FAILURE
nv.compileProgram = broken
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    a = inputs(seed=3); out = ssmgen.selective_scan(**a, backend="cuda")
    out2 = ssmgen.selective_scan(**a, backend="cuda", delta_softplus=True)
res.update(compiler=cr.compiler(), err=err(out, selective_scan_ref(**a)),
           warnings=[str(x.message)[:200] for x in w if "ssmgen" in str(x.message)])
"""),
"nonfinite_gaps_both_backends": ({}, """
for be in ("triton", "cuda"):
    r = {}
    a = inputs(L=40, N=4, seed=4); a["u"][0, 0, 5] = float("nan"); cu = torch.tensor([0, 20, 40], device="cuda")
    out, last = ssmgen.selective_scan(**a, cu_seqlens=cu, return_last_state=True, backend=be)
    ref, rl = selective_scan_ref(**a, cu_seqlens=cu, return_last_state=True)
    r["varlen_nan_leaks_to_next_seq"] = bool(torch.isnan(out[..., 20:]).any()) ; r["ref_next_seq_finite"] = bool(torch.isfinite(ref[..., 20:]).all())
    a = inputs(L=37, N=4, seed=5); a["A"][0, 1] = -float("inf")
    out, last = ssmgen.selective_scan(**a, return_last_state=True, backend=be)
    ref, rl = selective_scan_ref(**a, return_last_state=True)
    r["minus_inf_A_last_nonfinite"] = int((~torch.isfinite(last)).sum()); r["ref_last_nonfinite"] = int((~torch.isfinite(rl)).sum())
    a = inputs(L=40, N=3, seed=6); a["u"][0, 0, 1] = float("inf")
    out = ssmgen.selective_scan(**a, backend=be); ref = selective_scan_ref(**a)
    r["inf_u_N3_nan_where_ref_inf"] = int((torch.isnan(out) & torch.isinf(ref)).sum())
    a = inputs(L=40, N=4, seed=7); a["delta"][0, 0, 3] = float("nan")
    out = ssmgen.selective_scan(**a, backend=be); ref = selective_scan_ref(**a)
    r["nan_delta_pattern_equal"] = bool(torch.equal(torch.isnan(out), torch.isnan(ref)))
    res[be] = r
"""),
"many_channels_70000": ({}, """
for be in ("triton", "cuda"):
    a = inputs(b=1, d=70000, L=64, N=4, seed=8)
    out, last = ssmgen.selective_scan(**a, return_last_state=True, backend=be)
    ref, rl = selective_scan_ref(**a, return_last_state=True)
    res[be] = {"err_out": err(out, ref), "err_last": err(last, rl)}
"""),
"triton_step_heads_70000": ({}, """
H = 70000
st = torch.zeros(1, H, 1, 2, device="cuda"); x = torch.randn(1, H, 1, device="cuda")
B = torch.randn(1, 1, 2, device="cuda")
for be in ("triton", "cuda"):
    try:
        y = ssmgen.selective_state_update(st.clone(), x, x.abs(), -torch.ones(H, 1, 2, device="cuda"), B, B, backend=be)
        torch.cuda.synchronize(); res[be] = "ran, finite=%s" % bool(torch.isfinite(y).all())
    except Exception as e:
        res[be] = type(e).__name__ + ": " + str(e)[:160]
"""),
"triton_A_offsets_past_2_31": ({}, """
d, N, L = 2**22 + 64, 512, 2  # A and B: 2**31 + 32768 elements
g = torch.Generator(device="cuda").manual_seed(0)
u = torch.randn(1, d, L, device="cuda", generator=g); delta = torch.rand(1, d, L, device="cuda", generator=g)
A = -torch.rand(d, N, device="cuda", generator=g); B = torch.randn(d, N, device="cuda", generator=g)
C = torch.randn(1, N, L, device="cuda", generator=g)
sl = slice(d - 8, d)
ref = selective_scan_ref(u[:, sl], delta[:, sl], A[sl], B[sl], C)
for be in os.environ.get("BES", "triton,cuda").split(","):
    try:
        out = ssmgen.selective_scan(u, delta, A, B, C, backend=be); torch.cuda.synchronize()
        res[be] = {"err_last_channels": err(out[:, sl], ref), "finite": bool(torch.isfinite(out[:, sl]).all())}
    except Exception as e:
        res[be] = type(e).__name__ + ": " + str(e)[:200]
"""),
"triton_step_offsets_past_2_31": ({}, """
H, P, N = 2**12 + 1, 2**10, 512  # one state row: 2**31 + 2**19 elements
st = torch.zeros(1, H, P, N, device="cuda"); x = torch.ones(1, H, P, device="cuda")
A = -torch.ones(H, P, N, device="cuda"); B = torch.ones(1, 1, N, device="cuda")
for be in os.environ.get("BES", "triton,cuda").split(","):
    s = st.clone() if be == "cuda" else st
    try:
        y = ssmgen.selective_state_update(s, x, x, A, B, B, backend=be); torch.cuda.synchronize()
        # every state entry becomes dt * B * x = 1; out = N
        res[be] = {"last_head_out": float(y[0, -1].mean()), "last_head_state": float(s[0, -1].mean()),
                   "first_head_out": float(y[0, 0].mean())}
    except Exception as e:
        res[be] = type(e).__name__ + ": " + str(e)[:200]
    del s; torch.cuda.empty_cache()
"""),
"ops_fallback_cuda_broken_auto_backend": ({"OPSFIX": "1"}, """
from ssmgen.backends import cuda_runtime as cr
def broken(*a, **k): raise cr.CudaCompileError("simulated: the CUDA template does not compile")
cr.compile_cubin = broken
res["ops_file"] = ssmgen.ops.__file__
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    a = {k: v.requires_grad_(True) for k, v in inputs(seed=9).items()}
    out = ssmgen.selective_scan(**a); g = torch.autograd.grad(out.sum(), [a["u"]])[0]
    out2 = ssmgen.selective_scan(**a)
ref = selective_scan_ref(**a); gr = torch.autograd.grad(ref.sum(), [a["u"]])[0]
res.update(err=err(out, ref), err_du=err(g, gr), warnings=[str(x.message)[:220] for x in w if "ssmgen" in str(x.message)])
try:
    ssmgen.selective_scan(**a, backend="cuda"); res["explicit"] = "ran"
except Exception as e:
    res["explicit"] = type(e).__name__
"""),
}

OPSFIX = textwrap.dedent("""
root = os.environ["OPSFIX_ROOT"]
for name, mod in list(sys.modules.items()):
    if name.startswith("__editable__") and isinstance(getattr(mod, "MAPPING", None), dict):
        mod.MAPPING.update({"ssmgen": root + "/ssmgen", "ssmgen.backends": root + "/backends",
                            "ssmgen.templates": root + "/templates",
                            "ssmgen.autotune_cache": root + "/autotune_cache"})
""")

def main():
    names = sys.argv[1:] or list(CHECKS)
    out = {}
    for name in names:
        env_over, body = CHECKS[name]
        tmp = tempfile.mkdtemp()
        blk = os.path.join(tmp, "file"); open(blk, "w").close()
        env = dict(os.environ, SSMGEN_CACHE_DIR=os.path.join(tmp, "cache"), TRITON_CACHE_DIR=os.path.join(tmp, "tcache"))
        env.update({k: v.format(blk=blk) for k, v in env_over.items()})
        pre = PRE.replace("import ssmgen\n", OPSFIX + "import ssmgen\n") if "OPSFIX" in env_over else PRE
        code = pre + body + "\nprint('RESULT ' + json.dumps(res))\n"
        try:
            if "OPSFIX" in env_over:
                env["OPSFIX_ROOT"] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "opsfix")
            p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240,
                               cwd=tmp if "OPSFIX" in env_over else None)
            line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
            out[name] = json.loads(line[-1][7:]) if line else {"rc": p.returncode, "stderr": p.stderr[-6000:]}
        except subprocess.TimeoutExpired:
            out[name] = "TIMEOUT"
        print(name, json.dumps(out[name]), flush=True)
    if os.environ.get("OUT"):
        json.dump(out, open(os.path.join(os.environ["OUT"], "gpu_checks.json"), "w"), indent=1)

main()
