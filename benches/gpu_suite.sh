#!/usr/bin/env bash
# The whole GPU suite: benches/gpu_first_contact.sh's six stages (environment,
# install of the prebuilt wheel, probe, ptxas, tests/gpu file by file, bench)
# with a longer budget and the full bench: GPT-2 124M, bf16 and tf32, B=16
# and 32, gpt2rs against torch eager and torch.compile. About 9 minutes.
#
#   bash benches/gpu_suite.sh <wheel dir> [OUT]
#
# Which to use when:
#   - gpu_first_contact.sh on a machine or an image gpt2rs has not run on yet,
#     or after a change to the CUDA layer: under 7 minutes (a short bench), so
#     that a fix and a rerun fit in a 15-minute GPU slot;
#   - this script once first contact passes, for the figures in
#     benches/RESULTS.md.
#
# Everything else (preparing the wheel dir, the files in OUT, the archive for
# the device tool, the exit status) is as gpu_first_contact.sh's header says;
# without $OUT, OUT defaults to bench-out/gpu. Knobs: SUITE_BUDGET_S (total
# seconds, default 540), TEST_BUDGET_S (the tests' share, default 300),
# BENCH_ARGS (bench_gpu.py's arguments, default its own: the full bench),
# and gpu_first_contact.sh's.

if [ $# -eq 1 ] && [ -z "${OUT:-}" ]; then
    set -- "$1" bench-out/gpu
fi
export FC_BUDGET_S=${SUITE_BUDGET_S:-540}
export FC_TEST_S=${TEST_BUDGET_S:-300}
export FC_BENCH_ARGS=${BENCH_ARGS:-}
export FC_BENCH_TIMEOUT_S=${FC_BENCH_TIMEOUT_S:-200}
exec bash "$(dirname "${BASH_SOURCE[0]}")/gpu_first_contact.sh" "$@"
