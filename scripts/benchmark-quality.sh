#!/usr/bin/env bash
# Model quality of the local backend against H2O AutoML and FLAML (benchmarks/quality.py).
#
#   scripts/benchmark-quality.sh                  every dataset, seed and budget (hours)
#   scripts/benchmark-quality.sh --datasets kc1 --seeds 0 --budgets 15 --out /tmp/q
#
# Sets up .venv with the h2o extra when it lacks it (as scripts/setup.sh does), and a
# second virtualenv, .venv-bench, that holds FLAML and its learners, so that they never
# enter the project's own environment. Arguments go to benchmarks/quality.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

if ! .venv/bin/python -c "import h2o" >/dev/null 2>&1; then
  scripts/setup.sh h2o
fi

# Versions checked together: FLAML 2.3.6 fails on pandas 3 (string dtype in its data
# transformer), and xgboost 2.1 and later pull in a large CUDA NCCL wheel.
flaml_pins=(
  "flaml[automl]==2.3.6"
  "pandas==2.3.3"
  "numpy==2.4.6"
  "scikit-learn==1.9.1"
  "lightgbm==4.7.0"
  "xgboost==2.0.3"
)
stamp=".venv-bench/.installed-flaml-2.3.6"
if [ ! -f "$stamp" ]; then
  if [ ! -x .venv-bench/bin/python ]; then
    echo "benchmark-quality: creating .venv-bench with $("$python" --version)"
    "$python" -m venv .venv-bench
  fi
  echo "benchmark-quality: installing ${flaml_pins[*]} into .venv-bench"
  set +e
  .venv-bench/bin/python -m pip --disable-pip-version-check -q install "${flaml_pins[@]}" \
    2>&1 | grep -v "^WARNING: Location '.*' is ignored"
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "benchmark-quality: pip install into .venv-bench failed (exit $status)" >&2
    exit 1
  fi
  touch "$stamp"
fi

exec .venv/bin/python benchmarks/quality.py --flaml-python .venv-bench/bin/python "$@"
