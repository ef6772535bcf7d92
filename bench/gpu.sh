#!/usr/bin/env bash
# The GPU checks of issue 16 in one go (for a lent GPU machine whose image has torch but not ortsae's other packages:
# wheels in .whl/). Writes everything under $OUT (default: ./gpu-out).
set -o pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformer_lens; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
timeout 300 python3 -m ortsae.cli doctor --out "$OUT/doctor.json" 2>&1 | grep -v "Moving model" | tee "$OUT/doctor.log"
timeout 90 python3 bench/tiles.py 2>&1 | tee "$OUT/tiles.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_device.py > "$OUT/pytest.txt" 2>&1; tail -3 "$OUT/pytest.txt"
