#!/usr/bin/env bash
# Quiet tuning call (nothing else runs on the host: the decode step's ~20 us kernels are timed
# with CUDA events, which a busy CPU inflates): the CUDA scan records with 32 backward
# candidates (decode step included), the shapes in TRITON_SHAPES on Triton.
# KEEP_FWD=1: --keep-fwd (each shape's forward from its shipped record, the budget to the
# backward). Records land in $SSMGEN_CACHE_DIR and $OUT/records.json.
set -u
source benchmarks/device_setup.sh
timeout ${CUDA_S:-470} python3 -m ssmgen tune --backends cuda --max-bwd ${MAX_BWD:-32} --budget-s ${CUDA_BUDGET:-420} ${CUDA_SHAPES:+--shapes $CUDA_SHAPES} ${KEEP_FWD:+--keep-fwd} 2>&1 | tr '\r' '\n' > "$OUT/tune_cuda.log"; grep -A14 "^tuned" "$OUT/tune_cuda.log"
[ -n "${TRITON_SHAPES:-}" ] && timeout ${TRITON_S:-60} python3 -m ssmgen tune --backends triton --shapes "$TRITON_SHAPES" --budget-s ${TRITON_BUDGET:-40} 2>&1 | tr '\r' '\n' > "$OUT/tune_triton.log"; grep -A4 "^tuned" "$OUT/tune_triton.log"
cp "$SSMGEN_CACHE_DIR/autotune/records.json" "$OUT/records.json"
