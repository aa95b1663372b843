#!/usr/bin/env bash
# Interleaved A/B of the CUDA forward (old tree, new tree, old, new, ...: ROUNDS rounds, one
# process each, same call), for kernels whose single A/B was within the machine's noise
# (fwd_v4/ab_*.json: byte-identical kernels moved by up to 21%). Carry .whl and .whl2.
set -u
source benchmarks/device_setup.sh
R=$OUT/fwd_v4_rounds; mkdir -p $R
mkdir -p /tmp/old && tar xf .whl2/ssmgen_old.tar -C /tmp/old
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/oldsite /tmp/old > $R/old_install.log 2>&1 || tail -5 $R/old_install.log
S=${SHAPES:-m1_n64_bf16,m1_n128_bf16,m1_cplx_fp32,m1_fp32}
for r in $(seq 1 ${ROUNDS:-4}); do
  PYTHONPATH=/tmp/oldsite${PYTHONPATH:+:$PYTHONPATH} timeout 120 python3 benchmarks/bwd_ab_proc.py --kind fwd --shapes $S > $R/old_$r.json 2>> $R/log
  timeout 120 python3 benchmarks/bwd_ab_proc.py --kind fwd --shapes $S > $R/new_$r.json 2>> $R/log
done
python3 - $R <<'PY'
import json, glob, statistics, sys
R = sys.argv[1]
t = {}
for f in sorted(glob.glob(R + "/*_*.json")):
    who = f.rsplit("/", 1)[1].split("_")[0]
    for line in open(f):
        d = json.loads(line)
        if "shape" in d:
            t.setdefault((d["shape"], who), []).append(d["ms"])
for (s, who), v in sorted(t.items()):
    print(s, who, "median %.3f" % statistics.median(v), " ".join("%.3f" % x for x in v))
PY
cd $OUT && tar czf fwd_v4_rounds.tgz fwd_v4_rounds && rm -rf fwd_v4_rounds
