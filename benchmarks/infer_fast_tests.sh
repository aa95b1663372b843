set -u
source benchmarks/device_setup.sh
R=$OUT/infer2; mkdir -p $R
python3 -c "from ssmgen.backends import fastcall; print(fastcall.module())" > $R/build.log 2>&1
timeout 240 python3 -m pytest -q -p no:cacheprovider -rf tests/test_plans.py tests/test_fastcall.py tests/test_step.py > $R/gpu_tests.log 2>&1
tail -5 $R/gpu_tests.log
