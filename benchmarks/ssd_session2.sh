#!/usr/bin/env bash
# Device session 2: each SSD kernel alone over its config grid (both shapes), and ncu of one
# forward+backward at two configs.
set -x
R=$OUT/ssd_v1
mkdir -p $R
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $R/install2.log 2>&1
export SSMGEN_CACHE_DIR=/tmp/ssmgen_cache
timeout ${SWEEP_S:-330} python3 benchmarks/ssd_sweep.py $R/kernel_sweep.json --kernels > $R/kernel_sweep.log 2>&1
for cfg in '{"block_q": 32, "block_p": 64, "bwd_block_p": 32, "heads_per_program": 1, "bwd_warps": 4}'; do
  timeout 120 ncu --clock-control none -k regex:ssmgen_ssd --launch-skip 3 --launch-count 3 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis \
    python3 benchmarks/ssd_profile.py ssd_1.3b_bf16 "$cfg" > $R/ncu_1.3b.txt 2>&1
done
grep -E "ssmgen_ssd|Duration|Registers|Achieved Occupancy|Compute \(SM\) Throughput|Memory Throughput|Theoretical Occupancy|Local" $R/ncu_1.3b.txt | head -60
tail -70 $R/kernel_sweep.log
