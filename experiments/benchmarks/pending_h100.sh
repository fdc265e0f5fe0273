#!/usr/bin/env bash
# The GPU measurements the open issues still need, in calls that each fit the device's 10-minute limit, run from the
# repository root of the device's copy (the `run` tool; carry .whl, and .gpu-cache once a first call has made it):
#
#   bash experiments/benchmarks/pending_h100.sh vggsplat   # [3/6] VGGSplaT latency at 13 / 49 frames, training step
#   bash experiments/benchmarks/pending_h100.sh fast       # [6/6] distilled generation: time to scene / to all files
#   bash experiments/benchmarks/pending_h100.sh public     # [5/6] the public-weights route per stage + its GPU tests
#
# Each call installs the carried wheels (.whl: py3.12 wheels of what the device image lacks), reuses gsplat's compiled
# extension from .gpu-cache/torch_extensions.tar when present (else builds it, ~93 s, and leaves the tar in $OUT for
# the next session to carry), and copies its results files to $OUT.
set -euo pipefail
phase=${1:-}
if [[ ! $phase =~ ^(vggsplat|fast|public)$ ]]; then
    echo "error: phase '$phase': expected vggsplat, fast or public (pending_h100.sh <phase>)" >&2
    exit 2
fi
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/te
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 TORCH_EXTENSIONS_DIR=/tmp/te
if [[ -f .gpu-cache/torch_extensions.tar ]]; then
    tar -xf .gpu-cache/torch_extensions.tar -C /tmp/te
else
    python3 -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat did not build'"
    tar -cf "$OUT/torch_extensions.tar" -C /tmp/te .
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
results=experiments/benchmarks/results
case $phase in
vggsplat)
    python3 experiments/benchmarks/vggsplat.py --out "$OUT" --repeats 5 --train-repeats 3 --deadline-s 380
    ;;
fast)
    python3 experiments/benchmarks/generate.py --out "$OUT" --decoders tiny_vae --compile both \
        --sizes 352x640 480x832 --teacher-sizes 352x640 --repeats 2 --render-probe 1 8 --name generate_fast
    python3 -m pytest -q -m gpu -o addopts="" tests/test_generate_fast.py 2>&1 | tail -5 | tee "$OUT/gpu_tests_fast.txt"
    ;;
public)
    (cd experiments/benchmarks && python3 generate_public.py --out "$OUT" \
        --configs 352x640x49:50 704x1280x121:4:0 --decoders wan tiny_vae)
    python3 -m pytest -q -m gpu -o addopts="" tests/test_public_route_gpu.py 2>&1 | tail -5 | tee "$OUT/gpu_tests_public.txt"
    ;;
esac
ls -la "$OUT"
echo "copy $OUT/*.md and *.json into $results; carry $OUT/torch_extensions.tar as .gpu-cache/torch_extensions.tar"
