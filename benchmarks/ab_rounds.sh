#!/usr/bin/env bash
# Interleaved A/B of CUDA kernels across two trees (old, new, old, new, ...: ROUNDS rounds, one
# process each, same call; KIND=fwd|bwd, bwd_ab_proc.py at the shipped records' configs), for
# changes whose effect is inside the machine's noise (fwd_v4/ab_*.json: byte-identical kernels
# moved by up to 21% between two processes). Round 1 also compares the new outputs with the old.
# Old tree: .whl2/ssmgen_old.tar (`git archive` of the commit before). Results under
# $OUT/$NAME (default ab_rounds), summed up in summary.txt. Sourced setup: device_setup.sh
# (skipped where AB_NO_SETUP=1, i.e. when a session script already ran it). Carry .whl, .whl2.
set -u
[ "${AB_NO_SETUP:-0}" = 1 ] || source benchmarks/device_setup.sh
R=$OUT/${NAME:-ab_rounds}; mkdir -p $R
mkdir -p /tmp/old && tar xf .whl2/ssmgen_old.tar -C /tmp/old
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/oldsite /tmp/old > $R/old_install.log 2>&1 || tail -5 $R/old_install.log
S=${SHAPES:-m1_n64_bf16,m1_n128_bf16,m1_cplx_fp32,m1_fp32}
K=${KIND:-fwd}
for r in $(seq 1 ${ROUNDS:-4}); do
  save=(); against=()
  [ $r = 1 ] && save=(--save /tmp/ab_rounds) && against=(--against /tmp/ab_rounds)
  PYTHONPATH=/tmp/oldsite${PYTHONPATH:+:$PYTHONPATH} timeout 120 python3 benchmarks/bwd_ab_proc.py --kind $K --shapes $S "${save[@]}" > $R/old_$r.json 2>> $R/log
  timeout 120 python3 benchmarks/bwd_ab_proc.py --kind $K --shapes $S "${against[@]}" > $R/new_$r.json 2>> $R/log
done
python3 - $R <<'PY' | tee $R/summary.txt
import json, glob, statistics, sys
R = sys.argv[1]
t = {}
for f in sorted(glob.glob(R + "/*_*.json")):
    who = f.rsplit("/", 1)[1].split("_")[0]
    for line in open(f):
        d = json.loads(line)
        if "shape" in d:
            t.setdefault((d["shape"], who), []).append(d["ms"])
            if "rel_vs_old" in d:
                print(d["shape"], "new vs old outputs:", d["rel_vs_old"], "nan:", d["nan"])
for (s, who), v in sorted(t.items()):
    print(s, who, "median %.3f" % statistics.median(v), " ".join("%.3f" % x for x in v))
PY
