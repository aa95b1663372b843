#!/usr/bin/env bash
# Quiet tuning call (nothing else runs on the host: the decode step's ~20 us kernels are timed
# with CUDA events, which a busy CPU inflates): the CUDA scan records with 32 backward
# candidates (decode step included), the shapes in TRITON_SHAPES on Triton.
# KEEP_FWD=1 / KEEP_BWD=1: --keep-fwd / --keep-bwd (that kind's config from the shipped record,
# timed again; the budget to the other kind). Records land in $SSMGEN_CACHE_DIR and
# $OUT/records.json. NCU_FWD=SHAPE: afterwards, ncu of that shape's forward (tuned records).
set -u
source benchmarks/device_setup.sh
timeout ${CUDA_S:-470} python3 -m ssmgen tune --backends cuda --max-bwd ${MAX_BWD:-32} --budget-s ${CUDA_BUDGET:-420} ${CUDA_SHAPES:+--shapes $CUDA_SHAPES} ${KEEP_FWD:+--keep-fwd} ${KEEP_BWD:+--keep-bwd} 2>&1 | tr '\r' '\n' > "$OUT/tune_cuda.log"; grep -A14 "^tuned" "$OUT/tune_cuda.log"
[ -n "${TRITON_SHAPES:-}" ] && timeout ${TRITON_S:-60} python3 -m ssmgen tune --backends triton --shapes "$TRITON_SHAPES" --budget-s ${TRITON_BUDGET:-40} 2>&1 | tr '\r' '\n' > "$OUT/tune_triton.log"; grep -A4 "^tuned" "$OUT/tune_triton.log"
cp "$SSMGEN_CACHE_DIR/autotune/records.json" "$OUT/records.json"
if [ -n "${NCU_FWD:-}" ]; then
  timeout 120 ncu --clock-control none --set full --import-source no -k regex:ssmgen_cuda_fwd --launch-count 1 -f -o /tmp/nf python3 benchmarks/profile_one.py $NCU_FWD cuda > "$OUT/ncu_fwd.log" 2>&1
  ncu -i /tmp/nf.ncu-rep --page details > "$OUT/ncu_fwd_$NCU_FWD.txt" 2>&1
  ncu -i /tmp/nf.ncu-rep --page source --csv --print-source sass > "$OUT/ncu_fwd_${NCU_FWD}_sass.csv" 2>&1
  grep -E "ssmgen|Duration|Registers Per|Issue Slots Busy" "$OUT/ncu_fwd_$NCU_FWD.txt" | head -5
fi
