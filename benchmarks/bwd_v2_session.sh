#!/usr/bin/env bash
# One device call for the CUDA backward's v2 data path (vector tile loads, channel sums of
# variable dB/dC over Q-wide items): the smoke cases against float64, an A/B of the backward
# kernel against the previous template's on the suite shapes at the shipped records' configs
# (benchmarks/bwd_ab.py), then the CUDA gpu tests. Carry .whl (pytest, hypothesis).
set -u
source benchmarks/device_setup.sh
R=$OUT/bwd_v2; mkdir -p $R
timeout ${SMOKE_S:-200} python3 benchmarks/cuda_smoke.py --no-time > $R/smoke.log 2>&1; tail -4 $R/smoke.log
timeout ${AB_S:-240} python3 benchmarks/bwd_ab.py benchmarks/results/NVIDIA_H100_80GB_HBM3/bwd_v2/ab_old_bwd.json > $R/ab.json 2> $R/ab.log
tail -3 $R/ab.log; cut -c1-400 $R/ab.json
if [ "${TEST_S:-150}" != 0 ]; then
  SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-4} timeout ${TEST_S:-150} python3 -m pytest -m gpu -q -p no:cacheprovider -rf -k "cuda" tests/test_cuda_backend.py tests/test_scan_numerics.py tests/test_variants.py > $R/gpu_tests.log 2>&1
  tail -8 $R/gpu_tests.log
fi
cd $OUT && tar czf bwd_v2.tgz bwd_v2 && rm -rf bwd_v2
