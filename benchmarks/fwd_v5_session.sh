#!/usr/bin/env bash
# One device call for the CUDA forward v5 (16-byte vector loads of the variable B / C tiles):
# interleaved A/B of the forward against the previous tree at the shipped configs
# (ab_rounds.sh), ncu of the new m1_n128 forward (memory and warp-state sections), the GPU
# tests that cover the vector forward and the smoke cases. Carry .whl and .whl2 (old tree:
# .whl2/ssmgen_old.tar).
set -u
source benchmarks/device_setup.sh
R=$OUT/fwd_v5; mkdir -p $R
AB_NO_SETUP=1 NAME=fwd_v5/rounds ROUNDS=${ROUNDS:-3} SHAPES=${SHAPES:-m1_130m_bf16,m1_n64_bf16,m1_n128_bf16,m1_fp32} \
  bash benchmarks/ab_rounds.sh
timeout ${NCU_S:-90} ncu --clock-control none -k regex:ssmgen_cuda_fwd --launch-count 1 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
  --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats \
  python3 benchmarks/bwd_ab_proc.py --kind fwd --shapes m1_n128_bf16 > $R/ncu_fwd_m1_n128.txt 2>&1
grep -E "ssmgen_cuda|Duration|L1/TEX Cache Throughput|Memory Throughput|Registers Per|Issued Warp|No Eligible|Warp Cycles Per Issued" $R/ncu_fwd_m1_n128.txt | head -20
source benchmarks/forward_checks.sh
cd $OUT && tar czf fwd_v5.tgz fwd_v5 && rm -rf fwd_v5
