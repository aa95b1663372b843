#!/usr/bin/env bash
# Device call (carry .peer, .whl): the default with v_cdbc (ssd_chunk_v2/cdx_relief's winner)
# beside the previous default (v_cdbc=0) and mamba-ssm through the public call on both ssd
# shapes; then cdbc's v from the head's own dy S (benchmarks/exp/cdbc_dys.patch: no C S^T
# product, dC += dy S) against it; then the GPU tests of the default config.
set -u
source benchmarks/device_setup.sh
R=$OUT/${RUN:-vcdbc_confirm}
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
show() { grep -v -i "warn" $1 | grep -v "^$" | grep -v "^        0\.0" | cut -c1-150; }
PEER=1 OVER="v_cdbc=0;cdbc_stages=2" timeout ${CMP_S:-200} python3 benchmarks/ssd_chunk_compare.py \
  $R/cmp.json ssd_long_bf16 ssd_1.3b_bf16 > $R/cmp.log 2>&1
echo "compare rc $?"; show $R/cmp.log
git apply benchmarks/exp/cdbc_dys.patch && \
PEER=1 OVER="cdbc_stages=2" timeout ${DYS_S:-150} python3 benchmarks/ssd_chunk_compare.py \
  $R/cmp_dys.json ssd_long_bf16 ssd_1.3b_bf16 > $R/cmp_dys.log 2>&1
echo "compare (dy S) rc $?"; show $R/cmp_dys.log | grep -v "walk\|mamba\|_chunk_\|_state_"
git apply -R benchmarks/exp/cdbc_dys.patch
SSMGEN_SSD_EXAMPLES=6 timeout ${TEST_S:-150} python3 -m pytest -m gpu -q -p no:cacheprovider -rA \
  tests/test_ssd_kernels.py -k "matches_reference_gpu and (default or chunk_dzvc)" > $R/gpu_tests.log 2>&1
echo "tests rc $?"; grep -c PASSED $R/gpu_tests.log; grep "FAILED\|Error" $R/gpu_tests.log | head; tail -2 $R/gpu_tests.log
