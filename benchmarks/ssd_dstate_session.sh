#!/usr/bin/env bash
# Device call (carry .peer, .whl): the default on the suite's ssd shapes (kernels, the forward
# with and without checkpoints, forward+backward side by side with mamba-ssm); the walk
# (bwd_kernels=3) against the split pass 2 at d_state 256 and 64 (ssd_1.3b's other sizes);
# then the default's GPU tests and the fuzz.
set -u
source benchmarks/device_setup.sh
R=$OUT/ssd_dstate
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
PEER=1 timeout ${SUITE_S:-150} python3 benchmarks/ssd_config_ab.py $R/suite.json > $R/suite.log 2>&1
grep -v "^$" $R/suite.log | grep -v "^     " | cut -c1-230 | tail -12
D_STATE=256 PEER=1 CONFIGS='{"split": {}, "walk": {"bwd_kernels": 3}, "walk_w8": {"bwd_kernels": 3, "walk_warps": 8}, "walk_p32_w8": {"bwd_kernels": 3, "walk_block_p": 32, "walk_warps": 8}}' timeout ${N256_S:-150} python3 benchmarks/ssd_config_ab.py $R/n256.json ssd_1.3b_bf16 > $R/n256.log 2>&1
grep -v "^$" $R/n256.log | grep -v "^     " | cut -c1-230 | tail -12
D_STATE=64 PEER=1 CONFIGS='{"walk": {}, "split": {"bwd_kernels": 2}}' timeout ${N64_S:-100} python3 benchmarks/ssd_config_ab.py $R/n64.json ssd_1.3b_bf16 > $R/n64.log 2>&1
grep -v "^$" $R/n64.log | grep -v "^     " | cut -c1-230 | tail -8
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-6} timeout ${TEST_S:-180} python3 -m pytest -m gpu -q -p no:cacheprovider -rf ${TESTS:-tests/test_ssd_kernels.py -k "default or fuzz"} > $R/gpu_tests.log 2>&1
tail -8 $R/gpu_tests.log
