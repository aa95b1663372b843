#!/usr/bin/env bash
# Final device call of the CUDA-backend work: tune the CUDA backend on the whole suite, run
# `ssmgen bench` (both backends and the peer, with the new records), time the kernels alone
# (no Python call path) and profile the 130m forward and backward with ncu. Only the few
# result files stay under $OUT.
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
export SSMGEN_CACHE_DIR=/tmp/ssmc
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
PEER_SRC=$(ls -d .peer/mamba_ssm-*/ 2>/dev/null | head -1)
(python3 benchmarks/build_peer.py "$PEER_SRC" /tmp/peerbuild > "$OUT/peer_build.log" 2>&1; echo "peer build rc=$?" >> "$OUT/peer_build.log") &
PEER_PID=$!
timeout ${TUNE_TIMEOUT:-300} python3 -m ssmgen tune --backends cuda ${TUNE_ARGS:-} > /tmp/tune.log 2>&1
tr '\r' '\n' < /tmp/tune.log > "$OUT/tune.log"; grep -A12 "^tuned" "$OUT/tune.log"
cp "$SSMGEN_CACHE_DIR/autotune/records.json" "$OUT/records_cuda.json"
timeout 120 ncu --clock-control none -k regex:ssmgen_cuda --launch-count 2 --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats python3 benchmarks/profile_one.py m1_130m_bf16 cuda > "$OUT/ncu_130m.txt" 2>&1; tail -5 "$OUT/ncu_130m.txt"
wait $PEER_PID; tail -1 "$OUT/peer_build.log"
PYTHONPATH=/tmp/peerbuild:${PYTHONPATH:-} timeout ${BENCH_TIMEOUT:-180} python3 -m ssmgen bench --out "$OUT/bench" 2>&1 | tail -24
PYTHONPATH=/tmp/peerbuild:${PYTHONPATH:-} timeout ${KT_TIMEOUT:-120} python3 benchmarks/cuda_smoke.py --check "" --out "$OUT/kernel_timing.json" --shapes m1_130m_bf16,m1_long_bf16,m1_fp32 2>&1 | tail -8
