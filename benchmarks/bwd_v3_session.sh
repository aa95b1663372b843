#!/usr/bin/env bash
# One device call for the CUDA backward v3 (step-major variable dB / dC sums with vector
# reductions, lane sums by reduce-scatter): A/B of the backward against the previous tree in
# two processes (benchmarks/bwd_ab_proc.py; the old tree is `git archive` of the commit before,
# carried as .whl2/ssmgen_old.tar), the new GPU test of the lane and channel sums, the split and
# vector/element backward tests, the memory test, then the smoke cases. Carry .whl and .whl2.
set -u
source benchmarks/device_setup.sh
R=$OUT/bwd_v3; mkdir -p $R
mkdir -p /tmp/old && tar xf .whl2/ssmgen_old.tar -C /tmp/old
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/oldsite /tmp/old > $R/old_install.log 2>&1 || tail -5 $R/old_install.log
PYTHONPATH=/tmp/oldsite${PYTHONPATH:+:$PYTHONPATH} timeout ${AB_S:-200} python3 benchmarks/bwd_ab_proc.py --save /tmp/ab > $R/ab_old.json 2> $R/ab_old.log
tail -2 $R/ab_old.log; cut -c1-200 $R/ab_old.json
timeout ${AB_S:-200} python3 benchmarks/bwd_ab_proc.py --against /tmp/ab > $R/ab_new.json 2> $R/ab_new.log
tail -2 $R/ab_new.log; cut -c1-600 $R/ab_new.json
timeout ${TEST_S:-150} python3 -m pytest -m gpu -q -p no:cacheprovider -rf -x \
  -k "lane_and_channel_sums or vector_and_element_backwards or split_sequences or (memory and cuda)" \
  tests/test_scan_numerics.py tests/test_cuda_backend.py tests/test_memory.py > $R/gpu_tests.log 2>&1
tail -6 $R/gpu_tests.log
timeout ${SMOKE_S:-120} python3 benchmarks/cuda_smoke.py --no-time > $R/smoke.log 2>&1; tail -4 $R/smoke.log
cd $OUT && tar czf bwd_v3.tgz bwd_v3 && rm -rf bwd_v3
