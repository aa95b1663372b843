"""GPU: a sweep of the SSD chunk form's configs (backends/triton_ssd_chunk.py) on the suite's
ssd shapes, then the best against the walk, the shipped default and mamba-ssm.

1. Structures (tile x tiles, dy_walk, sequence splits) x launch variants. A variant sets
   every kernel's warps and stages at once (and cdbc's heads_split): each kernel's time
   depends only on the structure and its own fields, so one variant list covers every
   kernel's options, and the best config takes each kernel's best variant.
2. Every config is compiled first in a pool of processes (ssd_sweep_common.compile_ahead).
3. Each config's kernels are timed alone (do_bench medians, the launches of one real
   forward+backward replayed); out and every gradient are compared with the walk's.
4. The best config per structure is assembled, and the best two, the walk, the shipped
   default and mamba-ssm's Triton SSD run through the public call in one process: the
   inference forward (do_bench medians), then forward+backward (ssd_sweep_common.compare:
   do_bench medians, profiled kernel sums, peak memory).

Usage: python benchmarks/ssd_chunk_sweep.py OUT.json [shape names...]
Environment: SWEEP_JOBS (compile processes), SWEEP_ROUND (1 or 2, default 2), SWEEP_SHORT=1
(round 2's lists cut to the structures and launches that won round 1, for a short call) or 2
(shorter still: no 8 splits, one 32-channel walk, four launches) or 3 (round 5: one tile a
chunk, the walks over blocks of d_state against sequence splits, five launches) or 4 (round
6: the default's structure with dz_walk and v_cdbc, each on and off, five launches).
"""
import dataclasses
import itertools
import json
import os
import sys

import torch
from triton.testing import do_bench


from ssmgen.backends import triton_ssd as ts, triton_ssd_chunk as tc
from ssmgen.bench import peer_import
from ssmgen.suite import load

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssd_pass2_sweep import record, rel  # noqa: E402
from ssd_sweep_common import (compare, compile_ahead, forward_only, pipeline,  # noqa: E402
                              shape_inputs)

# the kernels a variant's fields launch (a walk's pre-pass runs under the walk's fields)
GROUPS = {"cst": ("cst", "cstp"), "cout": ("cout", "couty"), "cdst": ("cdst", "cdstp"),
          "cdx": ("cdx",), "cdbc": ("cdbc",)}


def structures(s):
    """(tile, tiles, dy_walk, splits, walk_block_p) to sweep for shape s: the walks need
    sequence splits where batch x heads gives fewer than 2 programs per SM (ssd_long).
    SWEEP_ROUND=1 is the first round's list (ssd_chunk_v2/sweep1), else the second's: 64-step
    tiles, one or two per chunk (tiles of 32 and 128 lost by 0.9-3 ms in round 1), the walks
    with 64 or 32 channels a program."""
    few = s["batch"] * s["heads"] < 264
    shortest = os.environ.get("SWEEP_SHORT") == "2"
    out = []
    if os.environ.get("SWEEP_SHORT") == "3":  # round 5: the walks over blocks of d_state
        base = dict(tile=64, tiles=1, dy_walk=0, heads_inner=int(few))
        walks = [(4 if few else 1, 64, 0), (1, 64, 64)]
        if few:
            walks += [(1, 64, 32), (2, 64, 64)]
        return [dict(base, splits=sp, walk_block_p=p, walk_block_n=n) for sp, p, n in walks]
    if os.environ.get("SWEEP_SHORT") == "4":  # round 6: dz in the walk, v and sigma in cdbc
        base = dict(tile=64, tiles=1, dy_walk=0, heads_inner=int(few), splits=4 if few else 1,
                    walk_block_p=64)
        return [dict(base, dz_walk=dz, v_cdbc=vc) for dz, vc in itertools.product((0, 1), (0, 1))]
    if os.environ.get("SWEEP_ROUND") == "1":
        for (tile, tiles), dyw in itertools.product(((64, 2), (32, 4), (128, 1), (64, 1)), (0, 1)):
            if (tile, tiles) in ((128, 1), (64, 1)) and dyw:
                continue
            for sp in ((4, 8) if few and dyw else (4,) if few else (1,)):
                out.append(dict(tile=tile, tiles=tiles, dy_walk=dyw, splits=sp, walk_block_p=64))
        return out
    for tiles, dyw in itertools.product((1, 2), (0, 1)):
        if few and (tiles, dyw) == (2, 0):  # round 1: 5.65 ms against 5.30 with dy_walk
            continue
        for sp in ((4, 8) if few and (tiles, dyw) == (1, 0) else (4,) if few else (1,)):
            out.append(dict(tile=64, tiles=tiles, dy_walk=dyw, splits=sp, walk_block_p=64,
                            heads_inner=1))
    # the grid order of cout and cdx in round 1 (tiles first), for its two best structures
    out += [dict(tile=64, tiles=t, dy_walk=d, splits=4 if few else 1, walk_block_p=64,
                 heads_inner=0) for t, d in ((1, 0), (2, 1))]
    if os.environ.get("SWEEP_SHORT") in ("1", "2"):  # round 1's two best, the old order once
        keep = [(1, 0, 1), (2, 1, 1), (1, 0, 0)]
        out = [st for st in out if (st["tiles"], st["dy_walk"], st["heads_inner"]) in keep]
    if shortest:
        out = [st for st in out if st["splits"] <= 4]
    # the walks at 32 channels a program (round 1 swept only 64): twice the programs, so
    # where splits were needed, half as many keep the count with a shorter pre-pass
    wide = [st for st in out if st["heads_inner"] and st["splits"] <= 4
            and (st["tiles"] == 1 or not shortest)]
    out += [dict(st, walk_block_p=32, splits=sp) for st in wide
            for sp in sorted({max(1, st["splits"] // d) for d in ((2,) if shortest else (1, 2))})]
    # cdx forming y before the gate again (yp_recompute, one tile a chunk only: round 4)
    out += [dict(st, yp_recompute=1) for st in out
            if st["tiles"] == 1 and st["walk_block_p"] == 64 and st["splits"] <= 4]
    return out


def variants():
    """Launch variants: warps and stages of every kernel at once; in round 2 also the heads
    per program of cout and cdx (with cdbc's heads_split at 2 where they are 2), and 4-warp
    variants with cout's and cdx's registers capped (128 and 168 a thread: 4 and 3 programs
    per SM, cout without spills, cdx with 680 bytes, sm_90 compile at ssd_long's sizes)."""
    if os.environ.get("SWEEP_ROUND") == "1":
        ws = [(w, st, 1) for w in (4, 8) for st in (1, 2, 3)]
        ws += [(8, 2, "hs2")]
    else:
        ws = [(w, st, hp) for w, st in ((4, 1), (4, 2), (4, 3), (8, 3)) for hp in (1, 2, 4)]
        if os.environ.get("SWEEP_SHORT") == "1":
            ws = [(w, st, hp) for w, st in ((4, 1), (4, 2), (8, 3)) for hp in (1, 2)]
        if os.environ.get("SWEEP_SHORT") == "2":
            ws = [(4, 1, 1), (4, 2, 1), (8, 3, 1), (4, 1, 2)]  # shortest
        capped = (1, 2)
        if os.environ.get("SWEEP_SHORT") in ("3", "4"):  # the walks' (the others' best among them)
            ws, capped = [(4, 1, 1), (4, 2, 1), (4, 3, 1), (8, 3, 1)], (1,)
        ws += [(4, st, "r") for st in capped]
    out = []
    for w, st, hp in ws:
        v = {f"{k}_{f}": x for k in GROUPS for f, x in (("warps", w), ("stages", st))}
        if hp == "r":
            v.update(cout_regs=128, cdx_regs=168)
            out.append(v)
            continue
        if hp == "hs2":
            v["heads_split"] = 2
        else:
            v.update(cout_heads=hp, cdx_heads=hp, heads_split=2 if hp == 2 else 1)
        out.append(v)
    return out


def time_config(c, spec, cfg, dout, ref):
    seen, (out, g) = record(lambda: pipeline(c, spec, cfg, dout), tc)
    ms = {}
    for kind, cfg_, a, grid in seen:
        ms[kind] = ms.get(kind, 0.0) + do_bench(lambda: tc._launch(spec, cfg_, kind, a, grid),
                                                warmup=5, rep=30, return_mode="median")
    err = {"out": rel(out, ref[0])}
    err.update({n: rel(v, ref[1][n]) for n, v in g.items() if v is not None})
    return ms, err


def assemble(struct, rows):
    """The structure's best config: each kernel group's fields from its fastest variant."""
    best, total = dict(struct), 0.0
    ok = [r for r in rows if "ms" in r]
    if not ok:
        return None, None
    for grp, kinds in GROUPS.items():
        key = lambda r: sum(r["ms"].get(k, 0.0) for k in kinds)  # noqa: E731
        r = min(ok, key=key)
        total += key(r)
        fields = [f"{grp}_warps", f"{grp}_stages"] + (
            ["heads_split"] if grp == "cdbc" else
            [f"{grp}_heads", f"{grp}_regs"] if grp in ("cout", "cdx") else [])
        best.update({f: r["config"][f] for f in fields})
    total += sum(v for k, v in ok[0]["ms"].items() if k in ("ccum", "cdfin"))
    return tc.SSDChunkConfig(**best), total


def main():
    out_path = sys.argv[1]
    names = sys.argv[2:] or [s["name"] for s in load()["ssd"]]
    by_name = {s["name"]: s for s in load()["ssd"]}
    shapes = [by_name[n] for n in names]  # in the order named (a timeout keeps the first)
    peer = peer_import("mamba_ssm.ops.triton.ssd_combined")
    plan, jobs = {}, []
    for s in shapes:
        cfgs = [(st, tc.SSDChunkConfig(**st, **v)) for st in structures(s) for v in variants()
                if st.get("heads_inner", 0) or v.get("cout_heads", 1) == 1]
        plan[s["name"]] = cfgs
        jobs += [(s["name"], cfg.encode()) for _, cfg in cfgs]
    compile_ahead(jobs)
    res = {"device": torch.cuda.get_device_name(), "shapes": {}}
    for s in shapes:
        print(f"=== {s['name']}", flush=True)
        x, dout, c, spec = shape_inputs(s)
        walk = ts.walk_config(spec, c.batch, c.heads)
        ref = pipeline(c, spec, walk, dout)
        rows, by_struct = [], {}
        for st, cfg in plan[s["name"]]:
            row = {"structure": st, "config": dataclasses.asdict(cfg)}
            try:
                row["ms"], row["err"] = time_config(c, spec, cfg, dout, ref)
            except Exception as e:  # recorded and skipped (shared memory, compile limits)
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                print(f"  {cfg.encode()}: {row['error'][:200]}", flush=True)
            else:
                print(f"  {cfg.encode()}: {sum(row['ms'].values()):.3f} ms "
                      + " ".join(f"{k} {v:.3f}" for k, v in row["ms"].items())
                      + f"; max rel diff vs walk {max(row['err'].values()):.1e}", flush=True)
            rows.append(row)
            by_struct.setdefault(json.dumps(st), []).append(row)
        best = {}
        for key, rs in by_struct.items():
            cfg, total = assemble(json.loads(key), rs)
            if cfg is not None:
                best[key] = (cfg, total)
                print(f"  best of {key}: {total:.3f} ms {cfg.encode()}", flush=True)
        ranked = sorted(best.values(), key=lambda v: v[1])
        impl = {"walk": walk, "shipped": ts.default_config(spec, c.batch, c.heads),
                **{f"chunk_best{i}": v[0] for i, v in enumerate(ranked[:2])}}
        res["shapes"][s["name"]] = {
            "rows": rows, "best": {k: {"config": v[0].encode(), "kernel_sum_ms": v[1]}
                                   for k, v in best.items()},
            "fwd_no_grad_ms": forward_only(s, x, impl, peer),
            "fb": compare(s, x, dout, impl, peer),
            "impl": {k: v.encode() for k, v in impl.items()}}
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)
        del x, dout, c, ref
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
