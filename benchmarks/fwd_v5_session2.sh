#!/usr/bin/env bash
# Second device call for the CUDA forward v5 (a lane's states as runs of 4 interleaved over the
# channel's lanes, past 4 states per lane): interleaved A/B against the tree before (m1_n128),
# the GPU tests that cover the forward's state mapping, then `ssmgen tune --keep-bwd` of the
# CUDA records (the backward kernels render byte-identical; the forwards all changed), records
# to $OUT/records.json. Carry .whl and .whl2 (old tree: .whl2/ssmgen_old.tar).
set -u
source benchmarks/device_setup.sh
R=$OUT/fwd_v5b; mkdir -p $R
AB_NO_SETUP=1 NAME=fwd_v5b/rounds ROUNDS=${ROUNDS:-2} SHAPES=${SHAPES:-m1_n128_bf16} bash benchmarks/ab_rounds.sh
source benchmarks/forward_checks.sh
timeout ${CUDA_S:-330} python3 -m ssmgen tune --backends cuda --max-bwd 32 --budget-s ${CUDA_BUDGET:-300} --keep-bwd 2>&1 | tr '\r' '\n' > $R/tune_cuda.log
grep -A10 "^tuned" $R/tune_cuda.log
cp "$SSMGEN_CACHE_DIR/autotune/records.json" $OUT/records.json
cd $OUT && tar czf fwd_v5b.tgz fwd_v5b && rm -rf fwd_v5b
