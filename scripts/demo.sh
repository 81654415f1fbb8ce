#!/usr/bin/env bash
# The main job: set up .venv, then plan and run AutoML on the bundled adult census data with
# the embedded default (the local backend; no cloud account needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/automl-broker run data/adult.csv.gz --target class \
  --max-runtime 120 --hours-per-month 730 --out "runs/adult-$(date +%Y%m%d-%H%M%S)" "$@"
