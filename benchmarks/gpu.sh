#!/usr/bin/env bash
# The CUDA checks in one go (a few minutes on one GPU): the CUDA tests, then the CUDA rows of the inference
# benchmark (fp32 / fp16 / bf16 autocast, ours with and without the fast path, against detectron2 when importable,
# else torchvision) and of the training benchmark. Prints every figure; exits non-zero when a step failed.
#
#   bash benchmarks/gpu.sh                       # python from PATH, fixtures in ../shared/fixtures
#   PYTHON=/path/to/venv/bin/python PYCONTRAST_FIXTURES=/path/to/fixtures bash benchmarks/gpu.sh
#
# Needs torch with CUDA, torchvision and this package's dependencies (pip install -e '.[test]'), and the
# detectron2 parity fixtures (PYCONTRAST_FIXTURES, else ../shared/fixtures beside the checkout).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
failed=()

step() {  # step NAME SECONDS COMMAND...: run one step under a time limit, note a failure, go on
  local name=$1 limit=$2
  shift 2
  echo
  echo "=== $name ($(date +%T), at most ${limit}s)"
  timeout "$limit" "$@" || failed+=("$name (exit $?)")
}

"$PY" - <<'EOF' || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch: nothing to run here"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"{torch.cuda.get_device_name(0)}")
EOF

# CUDA fast path = reference, batched predict is one forward pass, fp16/bf16 autocast keeps the shapes AP
step "CUDA tests" 300 "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda tests/test_fast_path.py tests/test_train.py
step "inference, CUDA, fp32/fp16/bf16" 300 "$PY" benchmarks/inference.py --device cuda --arch fpn c4 --images 3 \
  --rounds 3 --threads 4
step "training step, CUDA" 240 "$PY" benchmarks/train.py --device cuda --size 640 --batch 4 --rois 512 --iters 10 \
  --warmup 3 --rounds 2 --threads 4

echo
if ((${#failed[@]})); then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "all CUDA steps passed"
