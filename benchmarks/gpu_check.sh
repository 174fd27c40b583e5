#!/usr/bin/env bash
# Every family's torch engine on a CUDA GPU (fp32, fp16, CUDA graphs for the UNet step), parity to
# the CPU maps and frames/s at batch 1 and 8, within 8 minutes: see benchmarks/gpu_check.py.
# Exit status 3: no GPU here (nothing was run); 1: a case below CC 0.999; 124: over the time limit.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python=python3
exec timeout "${GPU_CHECK_TIMEOUT_S:-480}" "$python" "$here/gpu_check.py" "$@"
