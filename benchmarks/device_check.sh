#!/usr/bin/env bash
# One command for a lent GPU machine: from the source tree, no install, no registry.
#   bash benchmarks/device_check.sh [--plan] [--skip-tests] [--full-bench] [--skip-compile] [--budget S]
# --plan prints the steps, their limits and their sum (within the device tool's 600 s) and runs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/device_check.py "$@"
