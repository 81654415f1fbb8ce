#!/usr/bin/env bash
# Create (or reuse) the project-local virtualenv at .venv and install automl-broker into it.
#
#   scripts/setup.sh            core install (local backend only)
#   scripts/setup.sh dev,all    with extras, as the tests need
#
# PyTorch: the declared dependency is a range, so machines with a GPU get their own build.
# Where a CPU wheel of torch lies on this machine (pip's find-links), it is taken first with
# --no-index, which avoids downloading a multi-GB CUDA build that the range would admit.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  torch_pin="${AUTOML_BROKER_TORCH:-torch==2.13.0}"
  if "${pip[@]}" install --no-index --no-deps "$torch_pin" >/dev/null 2>&1; then
    echo "setup: installed $torch_pin from a wheel on this machine"
  else
    echo "setup: no local torch wheel; torch comes from the package index"
  fi
fi

target="."
[ -n "$extras" ] && target=".[$extras]"
stamp=".venv/.installed-$(printf '%s' "$extras" | tr ',' '-')"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing automl-broker${extras:+[$extras]} into .venv"
  # Some machines' pip configuration names local package folders that lack most
  # packages; pip warns once per package about them. Keep the rest of its output.
  set +e
  "${pip[@]}" install -e "$target" 2>&1 | grep -v "^WARNING: Location '.*' is ignored"
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "setup: pip install failed (exit $status)" >&2
    exit 1
  fi
  touch "$stamp"
fi
