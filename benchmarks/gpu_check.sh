#!/usr/bin/env bash
# One run on a Linux machine with an NVIDIA GPU gives the whole answer: install MLX's CUDA
# backend, check the GPU against the CPU, dream / zoom video / fine-tune on the GPU, and time our
# step against PyTorch CUDA on the same card.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # installs requirements-cuda.txt and -torch.txt from PyPI
#   WHEELS=dir bash benchmarks/gpu_check.sh OUT     # offline: mlx and mlx-cuda-13 wheels from dir
#   BENCH_ARGS="--models googlenet --repeats 3" bash benchmarks/gpu_check.sh OUT
#
# Writes OUT/gpu-check.log (every command's output), OUT/bench.md (the table), OUT/bench.json,
# OUT/dream.png and OUT/zoom.gif. Each part runs even when an earlier one failed; the exit
# status is the number of parts that failed.
set -u
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-gpu-check}" && cd "${1:-gpu-check}" && pwd)
py=${PYTHON:-python3}
log=$out/gpu-check.log
: > "$log"
failed=0

part() {  # part NAME COMMAND...: run it, its output into the log, one summary line on the terminal
    local name=$1 start=$SECONDS status
    shift
    echo "===== $name: $*" >> "$log"
    "$@" >> "$log" 2>&1
    status=$?
    echo "===== $name: exit $status after $((SECONDS - start)) s" >> "$log"
    echo "$name: exit $status after $((SECONDS - start)) s"
    [ "$status" -eq 0 ] || failed=$((failed + 1))
}

if [ -n "${WHEELS:-}" ]; then
    # Offline: the CUDA libraries (cuBLAS, cuDNN, NVRTC...) must already be installed, as PyTorch's are.
    part install "$py" -m pip install --no-deps --no-index "$WHEELS"/*.whl
else
    part install "$py" -m pip install -r requirements-cuda.txt -r requirements-dev.txt   # torch, pytest: the tests, the bench
fi
part nvidia-smi nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
part info "$py" dream.py --info
part test-gpu "$py" -m pytest -q -s -p no:cacheprovider -rs tests/test_gpu.py
part dream "$py" dream.py --input assets/chelsea.png --model efficientnet_lite0 --output "$out/dream.png"
part zoom "$py" dream_video.py --input assets/coffee.png --model efficientnet_lite0 --frames 12 --max-size 384 \
    --octaves 2 --steps 6 --output "$out/zoom.gif"

# Fine-tuning: two generated classes (stripes, discs), one short epoch.
data=$(mktemp -d)
"$py" - "$data" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image, ImageDraw
rng = np.random.default_rng(0)
for kind in ("stripes", "discs"):
    folder = Path(sys.argv[1]) / kind
    folder.mkdir(parents=True)
    for i in range(16):
        image = Image.new("RGB", (160, 160), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for k in range(6):
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            if kind == "stripes":
                draw.rectangle([0, k * 28, 160, k * 28 + 12], fill=colour)
            else:
                x, y = rng.integers(10, 150, 2)
                draw.ellipse([x - 14, y - 14, x + 14, y + 14], fill=colour)
        image.save(folder / f"{i}.jpg")
EOF
part train "$py" train_dream.py --data "$data" --model efficientnet_lite0 --epochs 1 --batch-size 8 \
    --image-size 128 --out "$data/finetuned.npz" --checkpoint-dir "$data/ckpt"
rm -rf "$data"

# ${BENCH_ARGS} is split on spaces on purpose: it holds several flags.
# shellcheck disable=SC2086
part bench "$py" bench.py --device gpu --json "$out/bench.json" ${BENCH_ARGS:-}
# The table is the last part of the bench's output.
sed -n '/^## DeepDream-MLX speed/,/^===== bench: exit/p' "$log" | sed '$d' > "$out/bench.md"
echo "failed parts: $failed (details: $log)"
exit "$failed"
