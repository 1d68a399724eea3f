#!/usr/bin/env bash
# Every GPU figure of the README in one run of about 7.5 minutes, for a GPU machine lent for a short
# while: resnet50 throughput (issue: 5,000 images/s on an H100), the first-epoch cost of a
# depthwise network, feature extraction with batch norms folded, a small grid through Snakemake and
# the GPU lease, and the tutorial comparison.
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR] [FASHION_DIR]
#
# Each step runs under its own time limit, so one that hangs costs only its slot; its full output
# goes to OUT_DIR/<step>.log (default /tmp/gpu-checks) and its last lines to the terminal.
# FASHION_DIR: a Fashion-MNIST folder for the tutorial comparison (the Debian package's by default;
# elsewhere write a 0.4 MB one with `python benchmarks/vs_tutorial.py --save-fashion-subset DIR`).
# Python is `python3` unless PYTHON says otherwise; it needs the project's requirements.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/gpu-checks}
fashion=${2:-/usr/share/datasets/fashion-mnist}
python=${PYTHON:-python3}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c "import torch; print('torch', torch.__version__, 'cuDNN', torch.backends.cudnn.version(), torch.cuda.get_device_name())"

step() {
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  echo "=== $name (limit ${limit} s)"
  timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - started)) s"
  grep -v "^Using \|^cache:" "$out/$name.log" | tail -n "${TAIL:-6}"
}

# The depthwise network's first epoch (was 20 s of cuDNN run-time compilation on an H200).
step lite0_small 60 "$python" benchmarks/throughput.py --backbone efficientnet_lite0 --images 350 \
  --batch-size 32 --epochs 5 --variants eager --threads 4
# resnet50, 224 px, batch 256: as configured, with cuDNN's timing runs, compiled.
TAIL=5 step resnet50 240 "$python" benchmarks/throughput.py --images 8000 --variants eager,benchmark,compile \
  --threads 4
# Feature extraction as built against with batch norms folded, at the GPU's evaluation batch.
step folding 40 "$python" benchmarks/folding.py --images 4096 --batch-size 512 --repeats 3
TAIL=14 step gpu_grid 120 "$python" benchmarks/gpu_grid.py --size 128 --epochs 3 --seeds 0 --keep "$out/grid"
TAIL=24 step vs_tutorial 180 "$python" benchmarks/vs_tutorial.py --fashion "$fashion" --no-report
