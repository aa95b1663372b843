#!/usr/bin/env bash
# One device call: ncu (full set, source counters) of the v2 CUDA backward at the shipped
# records' configs, vector and element variants, on m1_130m and m1_n128.
set -u
source benchmarks/device_setup.sh
R=$OUT/stall2; mkdir -p $R
prof() {  # name, args...
  local name=$1; shift
  timeout ${NCU_S:-150} ncu --clock-control none --set full --import-source no -k "regex:ssmgen_cuda_bwd" --launch-count 1 \
    -f -o $R/$name python3 benchmarks/profile_bwd.py "$@" > $R/$name.log 2>&1
  ncu -i $R/$name.ncu-rep --page details > $R/$name.txt 2>&1
  ncu -i $R/$name.ncu-rep --page source --csv --print-source sass > $R/${name}_sass.csv 2>&1
  grep -E "ssmgen|Duration|Registers Per|Achieved Occupancy|Issued Ipc|Executed Instructions  " $R/$name.txt | head -8
  rm -f $R/$name.ncu-rep
}
prof v130m m1_130m_bf16
prof e130m m1_130m_bf16 elem
prof v128 m1_n128_bf16
prof v64 m1_n64_bf16
cd $OUT && tar czf stall2.tgz stall2 && rm -rf stall2
