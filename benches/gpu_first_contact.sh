#!/usr/bin/env bash
# First contact with a GPU machine, in six stages that each leave their log
# and a marker, so that a crash or a hang still says where it happened:
#
#   01-env      driver and GPU (nvidia-smi), `ldconfig -p` for the CUDA
#               libraries, CUDA toolkit, pip versions, `uname -r`, Python
#   02-install  the prebuilt wheel(s) from <wheel dir> into FC_SITE (no index,
#               no dependencies: the machine is offline)
#   03-probe    device count and info, NVRTC version, compile_all("sm_90"),
#               one ops.add and one fp32 and one bf16 GEMM on
#               Runtime(ncuda=1) against numpy, gpt2rs.cuda.info(), the
#               library identity check and the CUDA lines of /proc/self/maps
#   04-ptxas    `ptxas -v` for sm_90 over the PTX that 03 cached: errors,
#               spills, stack frames, registers (skipped without a ptxas)
#   05-tests    tests/gpu file by file (test_gpu_attention_tc.py included),
#               per-file and per-test time limits, JUnit XML per file
#   06-bench    benches/bench_gpu.py, small: GPT-2 124M bf16, B=8, gpt2rs and
#               torch eager, 5 timed steps
#
#   bash benches/gpu_first_contact.sh <wheel dir> [OUT]
#
# Stage NN-name writes OUT/NN-name.log, then OUT/NN-name.done, .failed (its
# exit status; 124: stopped at its time limit) or .skipped (the reason). A
# log without a marker is the stage that was running when the machine or the
# script died. OUT/summary.txt has a line per stage; the tests add
# OUT/05-tests-<file>.xml, the bench OUT/06-bench.json. If 03 finds that the
# core would load a CUDA toolkit's library beside the pip wheel's (see
# gpt2rs.cuda.check_library_identity), it reruns itself with the fix,
# LD_LIBRARY_PATH=gpt2rs.cuda.link_dir(), writes that folder to
# OUT/03-probe.ld_library_path, counts as failed, and 04-06 run with the fix.
#
# The whole run ends within FC_BUDGET_S (default 400 s) plus a few seconds,
# so under 7 minutes on one H200: a fix and a rerun fit in a 15-minute GPU
# slot. Exit status 0 when no stage failed or ran out of time, else 1; 2 on a
# usage error. benches/gpu_suite.sh is this script with the full bench.
#
# The GPU machine: offline, Python 3.12 with torch (cu130), numpy, ml-dtypes,
# safetensors, pytest (pytest-timeout if present), the CUDA 13 pip libraries
# (nvidia-cuda-nvrtc, nvidia-cublas: nvidia/cu13/lib, which gpt2rs.cuda
# preloads), and no Rust. So only gpt2rs's abi3 wheel (and tensorboardX)
# travel, built beforehand on an x86-64 Linux machine with Rust, from the
# repository root:
#
#   grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
#   rm -rf .whl && mkdir .whl
#   maturin build --release --out .whl     # gpt2rs-*-cp310-abi3-*.whl, fine for 3.12
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl 'tensorboardX==2.6.*'
#
# Keep one version of each package in the wheel dir, and nothing the image
# already has (a second numpy in FC_SITE would shadow torch's). Then on the
# GPU machine, with the device tool (carry [".whl"], timeout_s at least
# FC_BUDGET_S + 60):
#
#   bash benches/gpu_first_contact.sh .whl
#
# With no OUT and $OUT set (the device tool's folder, from which at most 8
# files come back), the stages go to /tmp/gpt2rs-first-contact and FC_ARCHIVE
# defaults to $OUT/first-contact.tgz. FC_ARCHIVE: a .tar.gz of OUT rewritten
# after every stage, with summary.txt copied beside it.
#
# Knobs: PYTHON (default python3); FC_SITE (install target, default
# /tmp/gpt2rs-site); GPT2RS_CUDA_CACHE (default /tmp/gpt2rs-cuda-cache);
# FC_BUDGET_S (400); FC_TEST_S (tests' share, 200); FC_TEST_TIMEOUT_S (one
# test, with pytest-timeout, 120); FC_BENCH_ARGS (bench_gpu.py's arguments,
# default "--modes bf16 --batch-sizes 8 --impls gpt2rs,eager --steps 5
# --warmup 2"; empty: its own defaults, the full bench); FC_BENCH_TIMEOUT_S
# (one bench run, 180); PTXAS (the ptxas to use); FC_ARCHIVE (above).

set -u -o pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
PY=${PYTHON:-python3}
DEFAULT_BENCH_ARGS="--modes bf16 --batch-sizes 8 --impls gpt2rs,eager --steps 5 --warmup 2"
# Most basic first: a CUDA error that poisons a process's context costs one file.
TEST_ORDER="test_gpu_ops test_gpu_attention_tc test_gpu_model test_gpu_memory"

# Marks the running stage skipped (the runner sees the marker) and ends it.
skip() {
    echo "skipped: $*"
    echo "$*" >"$FC_STAGE_BASE.skipped"
    exit 0
}

# ---------------------------------------------------------------- 01 env
stage_env() {
    echo "== host"
    echo "$(hostname) $(uname -m), kernel $(uname -r), $(date -u +%FT%TZ)"
    echo "== GPU"
    if command -v nvidia-smi >/dev/null; then
        timeout 20 nvidia-smi || echo "nvidia-smi: exit $?"
        timeout 20 nvidia-smi --format=csv \
            --query-gpu=name,compute_cap,memory.total,driver_version,clocks.max.sm || true
    else
        echo "nvidia-smi: not found"
    fi
    echo "== CUDA libraries in the loader cache (ldconfig -p)"
    ldconfig -p 2>/dev/null | grep -E 'lib(cuda|cublas|nvrtc|nccl|nvidia)' || echo "(none)"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    echo "== CUDA toolkit"
    for tool in nvcc ptxas; do echo "$tool: $(command -v "$tool" || echo 'not on PATH')"; done
    ls -d /usr/local/cuda* 2>/dev/null || echo "no /usr/local/cuda*"
    command -v nvcc >/dev/null && nvcc --version | tail -2
    echo "== Python"
    "$PY" -c 'import sys; print(sys.version.replace("\n", " "), sys.executable)'
    local pkgs='numpy|ml.dtypes|safetensors|huggingface.hub|rich|tensorboardx|pytest|pytest.timeout'
    pkgs="$pkgs|hypothesis|torch|triton|transformers|mpi4py|nvidia-.*|cuda-.*"
    "$PY" -m pip list 2>/dev/null | grep -iE "^($pkgs) " || echo "pip list: nothing matched"
    echo "== wheel dir $FC_WHEELS"
    ls -l "$FC_WHEELS"
}

# ---------------------------------------------------------------- 02 install
stage_install() {
    if ! ls "$FC_WHEELS"/gpt2rs-*.whl >/dev/null 2>&1; then
        echo "no gpt2rs-*.whl in $FC_WHEELS"
        return 2
    fi
    rm -rf "$FC_SITE"
    "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$FC_SITE" "$FC_WHEELS"/*.whl || return
    PYTHONPATH="$FC_SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$FC_SITE" <<'EOF'
import os, sys
import gpt2rs
from gpt2rs import cuda
print("gpt2rs", gpt2rs.__version__, "from", os.path.dirname(gpt2rs.__file__))
if not os.path.realpath(gpt2rs.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep):
    sys.exit(f"gpt2rs was not imported from {sys.argv[1]}: is the wheel in the wheel dir complete?")
print("preloaded:", cuda.preload())
EOF
}

# ---------------------------------------------------------------- 03 probe
stage_probe() {
    local probe rc
    probe=$(mktemp /tmp/gpt2rs-probe.XXXXXX)
    cat >"$probe" <<'EOF'
import glob, json, os, re, sys, time
import numpy as np

failed = []


def step(what, fn):
    t = time.time()
    try:
        r = fn()
    except Exception as e:  # every failure is a line, and the probe goes on
        failed.append(f"{what}: {type(e).__name__}: {e}")
        print(f"FAIL  {failed[-1]} ({time.time() - t:.1f} s)", flush=True)
        return None
    shown = "" if r is None else ": " + str(r)
    print(f"ok    {what} ({time.time() - t:.1f} s){shown[:300]}", flush=True)
    return r


import gpt2rs
from gpt2rs import cuda, ops

print("gpt2rs", gpt2rs.__version__, "from", os.path.dirname(gpt2rs.__file__))
print("LD_LIBRARY_PATH=" + os.environ.get("LD_LIBRARY_PATH", ""))
print("preloaded:", cuda.preload())
# Before the core loads anything: would it load a toolkit's copy?
step("library identity before the first CUDA call", lambda: cuda.check_library_identity())
if failed and not os.environ.get("FC_LINKED"):
    links = cuda.link_dir(os.path.join(os.environ["GPT2RS_CUDA_CACHE"], "lib"))
    ld = ":".join(p for p in (links, os.environ.get("LD_LIBRARY_PATH")) if p)
    with open(os.environ["FC_STAGE_BASE"] + ".ld_library_path", "w") as f:
        f.write(ld + "\n")
    print(f"      the fix: rerunning the probe (and stages 04-06) with LD_LIBRARY_PATH={ld}\n")
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, FC_LINKED="1", LD_LIBRARY_PATH=ld))
if os.environ.get("FC_LINKED"):
    failed.append("library identity without the links (fixed by LD_LIBRARY_PATH)")

def usable():
    reason = cuda.unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)


step("unavailable_reason() is None", usable)
step("device_count()", cuda.device_count)
step("device_info(0)", lambda: cuda.device_info(0))
step("nvrtc_version()", cuda.nvrtc_version)
mods = step("compile_all('sm_90')", lambda: cuda.compile_all("sm_90"))
if mods:
    print(f"      {len(mods)} modules, {sum(n for _, n in mods) // 1024} KiB of PTX")
    for p in sorted(glob.glob(os.path.join(os.environ["GPT2RS_CUDA_CACHE"], "*-sm_90-*.ptx")))[:1]:
        head = open(p).read(4000)
        print("      PTX", " ".join(re.findall(r"^\.(?:version|target) .*$", head, re.M)))


def rel_err(got, want):
    got, want = np.asarray(got).astype(np.float64), np.asarray(want).astype(np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


rng = np.random.default_rng(0)


def on_gpu(rt, fn):
    """fn() on the runtime; every task must have run on its CUDA worker."""
    def counts():
        ws = rt.stats()["workers"]
        return sum(w["tasks"] for w in ws if w["kind"] == "cuda"), sum(w["tasks"] for w in ws)
    c0, a0 = counts()
    out = fn()
    rt.wait_all()
    c1, a1 = counts()
    if c1 == c0 or a1 - a0 != c1 - c0:
        raise AssertionError(f"{c1 - c0} of {a1 - a0} tasks ran on the GPU")
    return out


def add(rt):
    x, y = (rng.standard_normal((300, 257)).astype(np.float32) for _ in range(2))
    tx, ty = (gpt2rs.Tensor.from_numpy(a, (128, 96), runtime=rt) for a in (x, y))
    got = on_gpu(rt, lambda: ops.add(tx, ty, alpha=0.5, beta=2.0).to_numpy())
    err = rel_err(got, 0.5 * x.astype(np.float64) + 2.0 * y)
    assert err < 1e-6, f"relative error {err:.2e}"
    return f"relative error {err:.1e}"


def gemm(rt, dtype, tol):
    import ml_dtypes

    np_dtype = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16}[dtype]
    m, n, k = 1000, 768, 512
    a = rng.standard_normal((m, k)).astype(np_dtype)
    b = rng.standard_normal((k, n)).astype(np_dtype)
    ta = gpt2rs.Tensor.from_numpy(a, (256, 256), dtype=dtype, runtime=rt)
    tb = gpt2rs.Tensor.from_numpy(b, (256, 256), dtype=dtype, runtime=rt)
    got = on_gpu(rt, lambda: ops.gemm(ta, tb).to_numpy())
    err = rel_err(got, a.astype(np.float64) @ b.astype(np.float64))
    assert err < tol, f"relative error {err:.2e} > {tol:.0e}"
    return f"{m}x{n}x{k}, relative error {err:.1e}"


rt = step("Runtime(ncpu=1, ncuda=1, restrict='cuda')", lambda: gpt2rs.Runtime(ncpu=1, ncuda=1, restrict="cuda"))
if rt is not None:
    step("ops.add fp32 against numpy", lambda: add(rt))
    step("ops.gemm fp32 against numpy (float64)", lambda: gemm(rt, "fp32", 1e-5))
    step("ops.gemm bf16 against numpy (float64, bf16 inputs)", lambda: gemm(rt, "bf16", 2e-2))
step("library identity after the runtime started (cuBLAS loaded)", lambda: cuda.check_library_identity())
print("gpt2rs.cuda.info():")
print(json.dumps(step("info()", lambda: cuda.info()), indent=1, default=str))
print("CUDA lines of /proc/self/maps (file: mappings):")
seen = {}
for line in open("/proc/self/maps"):
    fields = line.split(maxsplit=5)
    path = fields[5].strip() if len(fields) == 6 else ""
    if re.search(r"cuda|cublas|nvrtc|nccl|nvidia", path):
        seen[path] = seen.get(path, 0) + 1
for path, count in seen.items():
    print(f"  {path}: {count}")
if rt is not None:
    step("Runtime.shutdown()", rt.shutdown)
print("-- summary")
print(f"probe: {len(failed)} failed" + (":" if failed else ""))
for f in failed:
    print("  " + f)
sys.exit(1 if failed else 0)
EOF
    "$PY" "$probe"
    rc=$?
    rm -f "$probe"
    return "$rc"
}

# ---------------------------------------------------------------- 04 ptxas
find_ptxas() {
    local p
    for p in "${PTXAS:-}" "$(command -v ptxas)" /usr/local/cuda/bin/ptxas; do
        [ -n "$p" ] && [ -x "$p" ] && { echo "$p"; return; }
    done
    # The nvidia-cuda-nvcc wheel: nvidia/cu13/bin/ptxas in a site-packages.
    "$PY" -c 'import os, sys
for d in sys.path:
    for sub in ("cu13/bin", "cuda_nvcc/bin"):
        p = os.path.join(d or ".", "nvidia", sub, "ptxas")
        if os.access(p, os.X_OK):
            print(p); sys.exit()' 2>/dev/null
}

stage_ptxas() {
    local ptxas tmp
    ptxas=$(find_ptxas)
    [ -n "$ptxas" ] || skip "no ptxas (PTXAS, PATH, /usr/local/cuda/bin, the nvidia-cuda-nvcc wheel)"
    shopt -s nullglob
    local ptx=("$GPT2RS_CUDA_CACHE"/*-sm_90-*.ptx)
    [ ${#ptx[@]} -gt 0 ] || skip "no cached sm_90 PTX in $GPT2RS_CUDA_CACHE (stage 03 compiles it)"
    echo "$ptxas: $("$ptxas" --version | tail -1)"
    tmp=$(mktemp -d /tmp/gpt2rs-ptxas.XXXXXX)
    # One ptxas per module, in parallel; each writes <module>.log and <module>.rc.
    # shellcheck disable=SC2016  # $1..$3 are sh -c's arguments
    printf '%s\n' "${ptx[@]}" | xargs -P "$(nproc)" -I{} sh -c \
        'f=$(basename "$1" .ptx); "$2" -arch=sm_90 -v "$1" -o /dev/null >"$3/$f.log" 2>&1; echo $? >"$3/$f.rc"' \
        _ {} "$ptxas" "$tmp"
    "$PY" - "$tmp" <<'EOF'
import glob, os, re, sys

kernels, errors, bad = [], [], 0
for log in sorted(glob.glob(os.path.join(sys.argv[1], "*.log"))):
    mod = os.path.basename(log)[: -len(".log")]
    rc = open(log[: -len(".log")] + ".rc").read().strip()
    text = open(log).read()
    if rc != "0":
        bad += 1
        errors.append(f"{mod}: ptxas exit {rc}")
    errors += [f"{mod}: {l.strip()}" for l in text.splitlines() if re.search(r"error|warning", l, re.I)]
    name = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
            kernels.append({"mod": mod.split("-")[0], "name": name})
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and kernels:
            kernels[-1].update(stack=int(m[1]), spill_st=int(m[2]), spill_ld=int(m[3]))
        m = re.search(r"Used (\d+) registers", line)
        if m and kernels:
            kernels[-1]["regs"] = int(m[1])
print(f"{len(kernels)} kernels in {len(glob.glob(os.path.join(sys.argv[1], '*.log')))} modules")
spills = [k for k in kernels if k.get("spill_st") or k.get("spill_ld")]
stacks = [k for k in kernels if k.get("stack")]
for k in sorted(kernels, key=lambda k: -k.get("regs", 0))[:8]:
    print(f"  {k.get('regs', '?'):>4} registers  {k['mod']}:{k['name']}")
for k in spills:
    print(f"  spills: {k['mod']}:{k['name']} stores {k['spill_st']} B, loads {k['spill_ld']} B")
for k in stacks:
    print(f"  stack frame: {k['mod']}:{k['name']} {k['stack']} B")
for e in errors[:40]:
    print("  " + e)
print("-- summary")
print(f"ptxas: {len(kernels)} kernels, {len(errors)} error/warning lines, "
      f"{len(spills)} kernels spill, {len(stacks)} use a stack frame, "
      f"max {max((k.get('regs', 0) for k in kernels), default=0)} registers")
sys.exit(1 if bad else 0)
EOF
    local rc=$?
    rm -rf "$tmp"
    return "$rc"
}

# ---------------------------------------------------------------- 05 tests
stage_tests() {
    local files=() f extra rc=0 left lim t0=$SECONDS summary=()
    for f in $TEST_ORDER; do [ -f "tests/gpu/$f.py" ] && files+=("$f"); done
    for extra in tests/gpu/test_*.py; do
        f=$(basename "$extra" .py)
        case " $TEST_ORDER " in *" $f "*) ;; *) files+=("$f") ;; esac
    done
    local per_test=()
    if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
        # thread method: the runtime waits with the GIL released, where a
        # signal handler would never run.
        per_test=(--timeout="${FC_TEST_TIMEOUT_S:-120}" --timeout-method=thread)
    else
        echo "pytest-timeout absent: a time limit per file only"
    fi
    local i n=${#files[@]}
    for ((i = 0; i < n; i++)); do
        f=${files[i]}
        # What is left, less 20 s for each file after this one; all of it
        # when that leaves less than 30 s (the earlier files come first).
        left=$((FC_STAGE_LIMIT - (SECONDS - t0) - 5))
        lim=$((left - 20 * (n - i - 1)))
        [ "$lim" -lt 30 ] && lim=$left
        if [ "$lim" -lt 15 ]; then
            summary+=("$f: not run, the stage's time is spent")
            rc=1
            continue
        fi
        echo "== pytest tests/gpu/$f.py (at most $lim s)"
        GPT2RS_REQUIRE_GPU=1 timeout -k 5 "$lim" "$PY" -m pytest -q -ra --durations=5 \
            -p no:cacheprovider ${per_test[@]+"${per_test[@]}"} \
            --junitxml="$OUTDIR/05-tests-$f.xml" "tests/gpu/$f.py" 2>&1 | tee "/tmp/gpt2rs-$f.out"
        local frc=${PIPESTATUS[0]}
        local last
        last=$(grep -E '(passed|failed|error|skipped|no tests ran)' "/tmp/gpt2rs-$f.out" | tail -1)
        last="$last$(grep -m1 '^ERROR: ' "/tmp/gpt2rs-$f.out" | sed 's/^/; /')"
        rm -f "/tmp/gpt2rs-$f.out"
        [ "$frc" = 124 ] && last="stopped after $lim s; $last"
        summary+=("$f: exit $frc; ${last:-no pytest summary}")
        [ "$frc" = 0 ] || rc=1
    done
    echo "-- summary"
    printf '%s\n' "${summary[@]}"
    return "$rc"
}

# ---------------------------------------------------------------- 06 bench
stage_bench() {
    local args=${FC_BENCH_ARGS-$DEFAULT_BENCH_ARGS}
    local budget=$((FC_STAGE_LIMIT - 45)) per_run=${FC_BENCH_TIMEOUT_S:-180}
    [ "$budget" -lt 10 ] && budget=10
    [ "$per_run" -gt $((FC_STAGE_LIMIT - 10)) ] && per_run=$((FC_STAGE_LIMIT - 10))
    echo "bench_gpu.py $args (start no run after $budget s, each run at most $per_run s)"
    # shellcheck disable=SC2086  # the arguments are words
    "$PY" benches/bench_gpu.py --json "$OUTDIR/06-bench.json" --budget-s "$budget" \
        --timeout-s "$per_run" $args || return
    # bench_gpu.py makes a failed or timed-out run a row of its table; this
    # stage fails on one (runs skipped for the budget are only counted).
    "$PY" - "$OUTDIR/06-bench.json" <<'EOF'
import json, sys

runs = json.load(open(sys.argv[1]))["runs"]
bad = [f"{r.get('impl')} {r.get('mode')} B={r.get('B')}: {r.get('status')}"
       for r in runs if r.get("status") not in ("ok", "skipped")]
ok = sum(r.get("status") == "ok" for r in runs)
print("-- summary")
print(f"bench: {ok} of {len(runs)} runs ok, {len(runs) - ok - len(bad)} skipped (budget)"
      + ("; " + "; ".join(bad) if bad else ""))
sys.exit(1 if bad or not ok else 0)
EOF
}

if [ "${1:-}" = "--stage" ]; then
    cd "$(dirname "$SELF")/.." || exit 2
    "stage_$2"
    exit $?
fi

# ---------------------------------------------------------------- the stages in order

if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "usage: bash benches/gpu_first_contact.sh <dir with the gpt2rs wheel (+ tensorboardX)> [OUT]" >&2
    exit 2
fi
FC_WHEELS=$(cd "$1" && pwd)
if [ $# -ge 2 ]; then
    OUTDIR=$2
elif [ -n "${OUT:-}" ]; then # the device tool's folder: a few files come back
    OUTDIR=/tmp/gpt2rs-first-contact
    FC_ARCHIVE=${FC_ARCHIVE:-$OUT/first-contact.tgz}
else
    OUTDIR=bench-out/gpu-first-contact
fi
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$SELF")/.." || exit 2
export PY FC_WHEELS OUTDIR
export FC_SITE=${FC_SITE:-/tmp/gpt2rs-site}
export GPT2RS_CUDA_CACHE=${GPT2RS_CUDA_CACHE:-/tmp/gpt2rs-cuda-cache}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
BUDGET=${FC_BUDGET_S:-400}
FAILED=0
SECONDS=0
rm -f "$OUTDIR"/0[1-6]-* "$OUTDIR/summary.txt"

say() { echo "== [$(printf '%3d' "$SECONDS") s] $*"; }

archive() {
    [ -n "${FC_ARCHIVE:-}" ] || return 0
    tar -czf "$FC_ARCHIVE.tmp" -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")" &&
        mv -f "$FC_ARCHIVE.tmp" "$FC_ARCHIVE" &&
        cp "$OUTDIR/summary.txt" "$(dirname "$FC_ARCHIVE")/summary.txt"
}

# mark NN-name status text: the marker, a summary line, the archive.
mark() {
    echo "$3" >"$OUTDIR/$1.$2"
    printf '%-12s %-8s %s\n' "$1" "$2" "$3" >>"$OUTDIR/summary.txt"
    say "$1: $2 ($3)"
    case $2 in failed) FAILED=$((FAILED + 1)) ;; esac
    archive
}

# run_stage NN-name cap_s keep_s [lines]: runs the stage with a time limit of
# cap_s, or what is left of the budget less keep_s (kept for later stages);
# prints its summary (or the last `lines` lines of its log).
run_stage() {
    local id=$1 cap=$2 keep=$3 lines=${4:-15} left t rc t0=$SECONDS
    left=$((BUDGET - SECONDS - keep))
    t=$((cap < left ? cap : left))
    if [ "$t" -lt 15 ]; then
        echo "not run: ${left}s of the budget left" >"$OUTDIR/$id.log"
        mark "$id" failed "not run: the budget (${BUDGET}s) is spent"
        return 1
    fi
    say "$id (at most ${t}s)"
    FC_STAGE_BASE="$OUTDIR/$id" FC_STAGE_LIMIT=$t timeout -k 10 "$t" \
        bash "$SELF" --stage "${id#*-}" >"$OUTDIR/$id.log" 2>&1
    rc=$?
    if grep -q '^-- summary$' "$OUTDIR/$id.log"; then
        sed -n '/^-- summary$/,$p' "$OUTDIR/$id.log" | tail -n +2 | sed 's/^/    /'
    else
        tail -n "$lines" "$OUTDIR/$id.log" | sed 's/^/    /'
    fi
    if [ "$rc" = 0 ] && [ -f "$OUTDIR/$id.skipped" ]; then
        printf '%-12s %-8s %s\n' "$id" skipped "$(cat "$OUTDIR/$id.skipped")" >>"$OUTDIR/summary.txt"
        say "$id: skipped ($(cat "$OUTDIR/$id.skipped"))"
        archive
    elif [ "$rc" = 0 ]; then
        mark "$id" "done" "$((SECONDS - t0)) s"
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        mark "$id" failed "exit $rc: stopped at its limit of ${t}s"
    else
        mark "$id" failed "exit $rc after $((SECONDS - t0)) s"
    fi
    return "$rc"
}

not_run() { # NN-name reason
    echo "not run: $2" >"$OUTDIR/$1.log"
    echo "$2" >"$OUTDIR/$1.skipped"
    printf '%-12s %-8s %s\n' "$1" skipped "$2" >>"$OUTDIR/summary.txt"
    say "$1: skipped ($2)"
    FAILED=$((FAILED + 1))
}

say "gpu_first_contact.sh: $FC_WHEELS -> $OUTDIR, budget ${BUDGET}s"
# Each stage keeps back what the later ones need at least: install 20 s,
# probe 40, ptxas 20, tests 60, bench 60. The bench gets what is left.
run_stage 01-env 40 200 40
if run_stage 02-install 60 180 10; then
    export PYTHONPATH="$FC_SITE${PYTHONPATH:+:$PYTHONPATH}"
    run_stage 03-probe 150 140 60
    if [ -s "$OUTDIR/03-probe.ld_library_path" ]; then
        export LD_LIBRARY_PATH
        LD_LIBRARY_PATH=$(cat "$OUTDIR/03-probe.ld_library_path")
        say "04-06 run with LD_LIBRARY_PATH=$LD_LIBRARY_PATH (the probe found it needed)"
    fi
    run_stage 04-ptxas 60 120
    run_stage 05-tests "${FC_TEST_S:-200}" 60
    run_stage 06-bench "$BUDGET" 0 30
else
    for id in 03-probe 04-ptxas 05-tests 06-bench; do not_run "$id" "02-install failed"; done
    archive
fi
say "done: $FAILED stage(s) failed or not run"
cat "$OUTDIR/summary.txt"
[ "$FAILED" = 0 ]
