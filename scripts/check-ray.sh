#!/usr/bin/env bash
# The local search on a running Ray cluster (tests/test_local_ray_cluster.py).
#
#   scripts/check-ray.sh            every test of that module
#   scripts/check-ray.sh -k deadline
#
# Installs the ray extra into .venv (as scripts/setup.sh does), then runs the tests in a
# new network namespace whose only interface is loopback, with Ray's usage reporting off:
# the Ray nodes the tests start can reach nothing beyond this machine. Needs root or
# unprivileged user namespaces, and `ip` (iproute2). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,ray

if [ "$(id -u)" -eq 0 ]; then
  isolate=(unshare --net)
else
  isolate=(unshare --user --map-root-user --net)
fi
if ! "${isolate[@]}" true 2>/dev/null; then
  echo "check-ray: cannot make a network namespace (${isolate[*]}); run as root or" \
    "allow unprivileged user namespaces" >&2
  exit 1
fi

exec "${isolate[@]}" env AUTOML_BROKER_RAY_LOOPBACK=1 RAY_USAGE_STATS_ENABLED=0 \
  bash -c 'ip link set lo up && exec .venv/bin/python -m pytest -q tests/test_local_ray_cluster.py "$@"' \
  check-ray "$@"
