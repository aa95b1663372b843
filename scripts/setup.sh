#!/usr/bin/env bash
# Sets up .venv with ssmgen and everything its demo and tests need (idempotent).
# On a fresh machine: Python 3.11+, gcc; torch 2.13.0 (the local CPU build here) and Triton come
# from the package index. numpy<2.3: Triton 3.6's interpreter calls int() on 1-element arrays,
# which numpy 2.3+ rejects.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q "triton==3.6.0" "numpy<2.3" "jinja2>=3" "hypothesis>=6" "pytest>=8" \
    pytest-xdist setuptools wheel matplotlib ninja
python -m pip install -q --no-deps --no-build-isolation -e .
python -c "import ssmgen, torch, triton; print('ssmgen', ssmgen.__version__, '| torch', torch.__version__, '| triton', triton.__version__)"
