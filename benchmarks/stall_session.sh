#!/usr/bin/env bash
# One device call: where backward kernels stall. ncu (full set, source counters) of one launch
# per profile, each written as its details page and its per-SASS-line table (csv).
#   SET=scan_ssd (default): the CUDA scan backward on m1_130m and m1_n128 and the Triton SSD
#     backward on ssd_1.3b, as `ssmgen` runs them (shipped records)
#   SET=bwd_v2: the CUDA scan backward at the shipped records' backward configs
#     (benchmarks/profile_bwd.py), vector and element variants
set -u
source benchmarks/device_setup.sh
SET=${SET:-scan_ssd}
R=$OUT/stall_$SET; mkdir -p $R
prof() {  # name, kernel regex, command...
  local name=$1 rx=$2; shift 2
  timeout ${NCU_S:-150} ncu --clock-control none --set full --import-source no -k "regex:$rx" --launch-count 1 \
    -f -o $R/$name "$@" > $R/$name.log 2>&1
  ncu -i $R/$name.ncu-rep --page details > $R/$name.txt 2>&1
  ncu -i $R/$name.ncu-rep --page source --csv --print-source sass > $R/${name}_sass.csv 2>&1
  grep -E "ssmgen|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issued Ipc|Executed Instructions  " $R/$name.txt | head -8
  rm -f $R/$name.ncu-rep
}
if [ "$SET" = bwd_v2 ]; then
  prof v130m ssmgen_cuda_bwd python3 benchmarks/profile_bwd.py m1_130m_bf16
  prof e130m ssmgen_cuda_bwd python3 benchmarks/profile_bwd.py m1_130m_bf16 elem
  prof v128 ssmgen_cuda_bwd python3 benchmarks/profile_bwd.py m1_n128_bf16
  prof v64 ssmgen_cuda_bwd python3 benchmarks/profile_bwd.py m1_n64_bf16
else
  prof scan130m_bwd ssmgen_cuda_bwd python3 benchmarks/profile_one.py m1_130m_bf16 cuda
  prof scan_n128_bwd ssmgen_cuda_bwd python3 benchmarks/profile_one.py m1_n128_bf16 cuda
  prof ssd13b_bwd ssmgen_ssd_bwd python3 benchmarks/ssd_profile.py ssd_1.3b_bf16
fi
cd $OUT && tar czf stall_$SET.tgz stall_$SET && rm -rf stall_$SET
