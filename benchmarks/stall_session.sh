#!/usr/bin/env bash
# One device call: where the backward kernels stall. ncu (full set, source counters) of the CUDA
# scan backward on m1_130m and m1_n128 at their shipped records, and of the Triton SSD backward
# on ssd_1.3b; for each, the details page and the per-SASS-line stall table (csv).
set -u
source benchmarks/device_setup.sh
R=$OUT/stall; mkdir -p $R
prof() {  # name, regex, command...
  local name=$1 rx=$2; shift 2
  timeout ${NCU_S:-150} ncu --clock-control none --set full --import-source no -k "regex:$rx" --launch-count 1 \
    -f -o $R/$name "$@" > $R/$name.log 2>&1
  ncu -i $R/$name.ncu-rep --page details > $R/$name.txt 2>&1
  ncu -i $R/$name.ncu-rep --page source --csv --print-source sass > $R/${name}_sass.csv 2>&1
  grep -E "ssmgen|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issued Ipc|Warp Cycles Per Issued|Executed Instructions  " $R/$name.txt | head -12
}
prof scan130m_bwd ssmgen_cuda_bwd python3 benchmarks/profile_one.py m1_130m_bf16 cuda
prof scan_n128_bwd ssmgen_cuda_bwd python3 benchmarks/profile_one.py m1_n128_bf16 cuda
prof ssd13b_bwd ssmgen_ssd_bwd python3 benchmarks/ssd_profile.py ssd_1.3b_bf16
mkdir -p $OUT/reps && mv $R/*.ncu-rep $OUT/reps/
cd $OUT && tar czf stall.tgz stall && rm -rf stall && tar czf reps.tgz reps && rm -rf reps
