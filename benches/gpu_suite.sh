#!/usr/bin/env bash
# The whole GPU suite in one call, for a machine with an NVIDIA GPU, Python
# 3.12 with torch, and neither internet nor Rust: install the prebuilt gpt2rs
# wheel, run tests/gpu (pytest), then benches/bench_gpu.py (gpt2rs vs torch
# eager / torch.compile, GPT-2 124M). About 9 minutes at most on an H100.
#
#   bash benches/gpu_suite.sh <wheel dir> [OUT]
#
# OUT (default $OUT, else bench-out/gpu) receives env.txt, gpu_tests.log,
# test_gpu_{ops,model,memory}.xml (JUnit), bench_gpu.log and bench_gpu.json
# (7 files). The exit status is the last failing pytest's when tests fail (the
# bench still runs), else the bench's.
#
# Preparing the wheel dir on the dev machine (x86-64 Linux with Rust), from
# the repository root. The GPU image already has numpy, ml-dtypes,
# safetensors, huggingface-hub, rich, pytest, hypothesis, torch and the CUDA
# 13 pip libraries (nvidia-cuda-nvrtc, nvidia-cublas: nvidia/cu13/lib, which
# gpt2rs.cuda preloads), so only gpt2rs and tensorboardX travel (< 5 MB; the
# device call's working tree may hold 64 MiB, so never the CUDA wheels):
#
#   grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
#   rm -rf .whl && mkdir .whl
#   maturin build --release --out .whl     # .venv/bin/maturin or /tmp/venv-d/bin/maturin;
#                                          # gpt2rs-*-cp310-abi3-linux_x86_64.whl, fine for 3.12
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl 'tensorboardX==2.6.*'
#
# then on the GPU machine (the device tool: carry [".whl"]):
#
#   bash benches/gpu_suite.sh .whl "$OUT"
#
# Keep one version of each package in the wheel dir, and nothing the image
# already has (a second numpy in the target dir would shadow torch's).
# Knobs: PYTHON (default python3), SUITE_BUDGET_S (total seconds, default
# 530), TEST_BUDGET_S (pytest's share, default 300), BENCH_ARGS (extra
# arguments for bench_gpu.py, e.g. "--modes bf16 --batch-sizes 16").

set -u -o pipefail

if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "usage: bash benches/gpu_suite.sh <dir with the gpt2rs wheel (+ tensorboardX)> [OUT]" >&2
    exit 2
fi
WHEELS=$(cd "$1" && pwd)
OUTDIR=${2:-${OUT:-bench-out/gpu}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUITE_BUDGET_S=${SUITE_BUDGET_S:-530}
TEST_BUDGET_S=${TEST_BUDGET_S:-300}
SITE=/tmp/gpt2rs-site
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export GPT2RS_CUDA_CACHE=${GPT2RS_CUDA_CACHE:-/tmp/gpt2rs-cuda-cache}
SECONDS=0

say() { echo "== [$(printf '%3d' "$SECONDS") s] $*"; }

# ---------------------------------------------------------------- environment
{
    say "gpu_suite.sh on $(hostname) ($(uname -m)), $(date -u +%FT%TZ)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
        nvidia-smi -L || true
    else
        echo "nvidia-smi: not found"
    fi
    "$PY" -c 'import sys; print("python", sys.version.split()[0], sys.executable)'
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' \
        || echo "torch: not importable"
    PKGS='numpy|ml.dtypes|safetensors|huggingface.hub|rich|tensorboardx|pytest|pytest.timeout|hypothesis'
    PKGS="$PKGS|nvidia-cuda-nvrtc|nvidia-cublas|nvidia-cuda-runtime|torch|triton"
    "$PY" -m pip list 2>/dev/null | grep -iE "^($PKGS) " || true
    echo "wheel dir $WHEELS:"
    ls -l "$WHEELS"
} 2>&1 | tee "$OUTDIR/env.txt"

# ---------------------------------------------------------------- install
say "installing the wheels into $SITE" | tee -a "$OUTDIR/env.txt"
rm -rf "$SITE"
if ! ls "$WHEELS"/gpt2rs-*.whl >/dev/null 2>&1; then
    echo "no gpt2rs-*.whl in $WHEELS" | tee -a "$OUTDIR/env.txt" >&2
    exit 2
fi
if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl 2>&1 | tee -a "$OUTDIR/env.txt"; then
    echo "pip install failed" | tee -a "$OUTDIR/env.txt" >&2
    exit 2
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - "$SITE" <<'EOF' 2>&1 | tee -a "$OUTDIR/env.txt"
import os, sys
import gpt2rs
from gpt2rs import cuda
print("gpt2rs", gpt2rs.__version__, "from", gpt2rs.__file__)
if not os.path.realpath(gpt2rs.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep):
    sys.exit(f"gpt2rs was not imported from {sys.argv[1]}: is the wheel in the wheel dir complete?")
print("preloaded:", cuda.preload())
print("unavailable_reason:", cuda.unavailable_reason())
count = getattr(cuda, "device_count", None)
print("device_count:", count() if count else "missing (no gpt2rs.cuda.device_count)")
try:
    print("nvrtc", cuda.nvrtc_version())
except Exception as e:
    print("nvrtc:", e)
EOF
[ "${PIPESTATUS[0]}" = 0 ] || exit 2

# ---------------------------------------------------------------- tests
# One pytest process per file, most basic first: a CUDA error that poisons
# the process's context (an illegal address, say) then costs one file, not
# all. GPT2RS_REQUIRE_GPU=1: a GPU that gpt2rs cannot see fails the run
# instead of skipping every test. A hung test ends its pytest (thread
# method: the runtime waits with the GIL released, where a signal handler
# would never run).
say "pytest tests/gpu (budget ${TEST_BUDGET_S} s)" | tee "$OUTDIR/gpu_tests.log"
TIMEOUT_ARGS=()
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
    TIMEOUT_ARGS=(--timeout=150 --timeout-method=thread)
fi
TEST_RC=0
T0=$SECONDS
for f in test_gpu_ops test_gpu_model test_gpu_memory; do
    left=$((TEST_BUDGET_S - (SECONDS - T0)))
    if [ "$left" -lt 20 ]; then
        say "$f: not run, test budget spent" | tee -a "$OUTDIR/gpu_tests.log"
        TEST_RC=1
        continue
    fi
    say "pytest tests/gpu/$f.py (at most $left s)" | tee -a "$OUTDIR/gpu_tests.log"
    GPT2RS_REQUIRE_GPU=1 timeout -k 10 "$left" "$PY" -m pytest -q -ra --durations=10 -p no:cacheprovider \
        ${TIMEOUT_ARGS[@]+"${TIMEOUT_ARGS[@]}"} --junitxml="$OUTDIR/$f.xml" "tests/gpu/$f.py" 2>&1 |
        tee -a "$OUTDIR/gpu_tests.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && echo "pytest stopped after $left s" | tee -a "$OUTDIR/gpu_tests.log"
    say "$f: pytest exit code $rc" | tee -a "$OUTDIR/gpu_tests.log"
    [ "$rc" = 0 ] || TEST_RC=$rc
done

# ---------------------------------------------------------------- bench
# Whatever the tests left of the budget, less a margin for the last run to
# finish (bench_gpu.py starts no run after --budget-s, and gives one run at
# most its remaining budget + 60 s).
LEFT=$((SUITE_BUDGET_S - SECONDS - 75))
[ "$LEFT" -lt 60 ] && LEFT=60
say "bench_gpu.py (budget ${LEFT} s)" | tee "$OUTDIR/bench_gpu.log"
# shellcheck disable=SC2086
timeout -k 10 $((LEFT + 90)) "$PY" benches/bench_gpu.py --json "$OUTDIR/bench_gpu.json" --budget-s "$LEFT" \
    --timeout-s 200 ${BENCH_ARGS:-} 2>&1 | tee -a "$OUTDIR/bench_gpu.log"
BENCH_RC=${PIPESTATUS[0]}
say "bench exit code $BENCH_RC; tests exit code $TEST_RC" | tee -a "$OUTDIR/bench_gpu.log"

if [ "$TEST_RC" != 0 ]; then
    exit "$TEST_RC"
fi
exit "$BENCH_RC"
