#!/usr/bin/env bash
# Device session: the decode step's C++ launch (backends/fastcall.py). Builds the extension
# (timed), runs the GPU tests that cover it, then the host-overhead script (fastcall on / off,
# mamba-ssm's Triton step alongside) and `ssmgen bench` on the step shape.
source benchmarks/device_setup.sh
R=$OUT/${RUN:-step_fast}
mkdir -p $R
{ time python3 -c "from ssmgen.backends import fastcall; print(fastcall.module())"; } > $R/build.log 2>&1
cat $R/build.log
SSMGEN_EXAMPLES=25 timeout 260 python3 -m pytest -q -x tests/test_fastcall.py tests/test_plans.py \
  tests/test_step.py tests/test_bench.py > $R/gpu_tests.log 2>&1; tail -5 $R/gpu_tests.log
timeout 200 python3 benchmarks/host_overhead.py $R/host_overhead.json > $R/host_overhead.log 2>&1
grep step $R/host_overhead.log
timeout 120 python3 -m ssmgen bench --shapes step_b64_d4096_n16 --out $OUT/bench_step > $R/bench.log 2>&1
tail -8 $R/bench.log
