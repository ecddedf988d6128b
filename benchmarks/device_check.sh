#!/usr/bin/env bash
# One command for a lent GPU machine: from the source tree, no install, no registry.
#   bash benchmarks/device_check.sh [--skip-tests] [--full-bench] [--skip-compile] [--budget S]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/device_check.py "$@"
