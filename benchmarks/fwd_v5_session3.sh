#!/usr/bin/env bash
# Third device call for the CUDA forward v5: the d_state 64 / 128 forwards re-tuned over their
# whole candidate space (K up to 16 states per lane; --max-fwd 48 takes every candidate), the
# backward kept (--keep-bwd), on a quiet host. Records to $OUT/records.json.
set -u
source benchmarks/device_setup.sh
R=$OUT/fwd_v5c; mkdir -p $R
timeout ${CUDA_S:-480} python3 -m ssmgen tune --backends cuda --shapes ${SHAPES:-m1_n64_bf16,m1_n128_bf16} \
  --max-fwd 48 --budget-s ${CUDA_BUDGET:-440} --keep-bwd 2>&1 | tr '\r' '\n' > $R/tune_cuda.log
grep -A6 "^tuned" $R/tune_cuda.log
cp "$SSMGEN_CACHE_DIR/autotune/records.json" $OUT/records.json
cd $OUT && tar czf fwd_v5c.tgz fwd_v5c && rm -rf fwd_v5c
