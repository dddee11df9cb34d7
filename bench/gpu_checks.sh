#!/usr/bin/env bash
# The GPU checks of issue 5 in one go, for a machine with a CUDA card and PyTorch but without our
# environment: the CUDA tests, then bench/recon_speed.py in float32 and in bfloat16 autocast.
# Usage: [ROWS=--paper-only] bench/gpu_checks.sh [LOG_DIR]
# ROWS: options for the timing rows; extra packages (EfficientNet-Lite0's weights package) may be
# put on PYTHONPATH beforehand.
set -u
log_dir=${1:-.}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$log_dir/test_cuda.log"
python3 bench/recon_speed.py --device cuda ${ROWS:-} 2>&1 | tee "$log_dir/recon_speed_cuda.log"
python3 bench/recon_speed.py --device cuda --mixed-precision ${ROWS:-} 2>&1 | tee "$log_dir/recon_speed_cuda_bf16.log"
