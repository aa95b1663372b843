#!/usr/bin/env bash
# Fourth device call for the CUDA forward v5 (16-bit B / C tiles in shared memory, HBC):
# interleaved A/B against the tree before on the bf16 shapes, the GPU tests of the forward's
# tiles and state runs, the smoke cases, then `ssmgen tune --keep-bwd` of the bf16 shapes
# (records to $OUT/records.json; merged only if the A/B says so). Carry .whl and .whl2.
set -u
source benchmarks/device_setup.sh
R=$OUT/fwd_v5d; mkdir -p $R
AB_NO_SETUP=1 NAME=fwd_v5d/rounds ROUNDS=${ROUNDS:-2} SHAPES=${SHAPES:-m1_130m_bf16,m1_1.4b_bf16,m1_n64_bf16,m1_n128_bf16} bash benchmarks/ab_rounds.sh
source benchmarks/forward_checks.sh
timeout ${CUDA_S:-240} python3 -m ssmgen tune --backends cuda --shapes m1_130m_bf16,m1_1.4b_bf16,m1_long_bf16,m1_n64_bf16,m1_n128_bf16 \
  --max-fwd 16 --budget-s ${CUDA_BUDGET:-210} --keep-bwd 2>&1 | tr '\r' '\n' > $R/tune_cuda.log
grep -A8 "^tuned" $R/tune_cuda.log
cp "$SSMGEN_CACHE_DIR/autotune/records.json" $OUT/records.json
cd $OUT && tar czf fwd_v5d.tgz fwd_v5d && rm -rf fwd_v5d
