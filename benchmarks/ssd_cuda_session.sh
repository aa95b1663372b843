#!/usr/bin/env bash
# Device call for the CUDA SSD kernels (carry .peer): the GPU tests against float64, each
# kernel over a config grid next to the Triton SSD kernels, the public call side by side with
# mamba-ssm's Triton SSD, and ncu of one CUDA forward+backward (NCU=0 leaves it out).
set -u
source benchmarks/device_setup.sh
R=$OUT/ssd_cuda
mkdir -p $R
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-6} timeout ${TEST_S:-200} python3 -m pytest -m gpu -q -p no:cacheprovider -rf -x ${TESTS:-tests/test_ssd_cuda.py} 2>&1 | tail -40 > $R/gpu_tests.log
tail -25 $R/gpu_tests.log
timeout ${SWEEP_S:-200} python3 benchmarks/ssd_cuda_sweep.py $R/sweep.json > $R/sweep.log 2>&1
grep -v "^$" $R/sweep.log | cut -c1-300 | tail -40
SSD_TORCH=0 timeout ${BENCH_S:-150} python3 benchmarks/ssd_bench.py $R/ssd_bench.json > $R/ssd_bench.log 2>&1
tail -12 $R/ssd_bench.log
if [ "${NCU:-1}" = 1 ]; then
  timeout ${NCU_S:-150} ncu --clock-control none -k regex:ssmgen_ssd_cuda --launch-skip 3 --launch-count 3 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section InstructionStats \
    python3 benchmarks/ssd_profile.py ssd_1.3b_bf16 "${NCU_CFG:-}" cuda > $R/ncu_1.3b.txt 2>&1
  grep -E "ssmgen_ssd|Duration|Registers Per|Achieved Occupancy|Compute \(SM\) Throughput|Memory Throughput|Theoretical Occupancy|Block Limit|Stall|Issued Ipc|Warp Cycles Per Issued" $R/ncu_1.3b.txt | head -60
fi
