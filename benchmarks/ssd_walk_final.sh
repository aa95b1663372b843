#!/usr/bin/env bash
# Device call after the walk became the default (carry .peer, .whl): the SSD GPU tests against
# float64 (default = walk, the split form, packed sequences, the fuzz), ssd_bench through the
# public call side by side with mamba-ssm, the walk's ablations (benchmarks/exp/walk_ablations.py)
# and an Nsight Compute profile of the default's kernels on ssd_1.3b (where the walk's time goes).
set -u
source benchmarks/device_setup.sh
R=$OUT/ssd_walk_final
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
SSD_TORCH=0 SSD_CUDA=0 timeout ${BENCH_S:-150} python3 benchmarks/ssd_bench.py $R/ssd_bench.json > $R/ssd_bench.log 2>&1
tail -8 $R/ssd_bench.log
timeout ${ABL_S:-90} python3 benchmarks/exp/walk_ablations.py $R/walk_ablations.json > $R/walk_ablations.log 2>&1
tail -9 $R/walk_ablations.log
timeout ${NCU_S:-100} ncu --clock-control none -k "regex:ssmgen_ssd_(fwdy|dwalk|dbc)" --launch-skip 6 --launch-count 3 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
  --section MemoryWorkloadAnalysis --section SchedulerStats \
  python3 benchmarks/ssd_profile.py ssd_1.3b_bf16 > $R/ncu_1.3b.txt 2>&1
grep -E "^  ssmgen|Duration|Memory Throughput|DRAM Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Stall|Shared Memory Configuration Size|Issued Warp" $R/ncu_1.3b.txt | head -60
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-4} timeout ${TEST_S:-200} python3 -m pytest -m gpu -q -p no:cacheprovider -rf ${TESTS:-tests/test_ssd_kernels.py} > $R/gpu_tests.log 2>&1
tail -12 $R/gpu_tests.log
