#!/usr/bin/env bash
# Device call for the training scans' C++ launches (ssmgen.ops._TrainPlan): infer_fast_session.sh
# with the launch and plan tests (and TESTS added by the caller, e.g. tests/test_nn.py) and the
# tiny forward+backward profile. (train_fast_v1 ran this call's earlier, standalone form: the
# same steps, with pytest -x.)
NAME=train_fast PROFILE=1 TESTS=${TESTS:-"tests/test_fastcall.py tests/test_plans.py"} \
  exec bash benchmarks/infer_fast_session.sh
