"""oneMKL's bf16 GEMM (gpt2rs.mkl): the choice is always reported and a bad
GPT2RS_BF16_GEMM is one ValueError; the MKL path itself runs where the mkl
wheel is installed (pip install 'gpt2rs[mkl]'), and the AMX default where
the CPU has AMX-BF16. Each case runs in a subprocess: the choice is made
once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import gpt2rs

NO_MKL = "the mkl wheel is not installed here (pip install 'gpt2rs[mkl]')"

# Logits of a small model in bf16 and fp32_fast_bf16 and in fp64, as JSON.
PROBE = """
import json, sys
import numpy as np
import gpt2rs
cfg = {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 300, "n_positions": 64}
ids = np.random.default_rng(0).integers(0, 300, size=(2, 37))
out = {"choice": gpt2rs.mkl.bf16_gemm()}
for dt in ("fp64", "bf16", "fp32_fast_bf16"):
    m = gpt2rs.GPT2LMHead.from_config(cfg, seed=3, dtype=dt, vocab_tile=128, hidden_size_tile=32)
    out[dt] = np.asarray(m.forward(ids), dtype=np.float64).ravel().tolist()
print(json.dumps(out))
"""


def run_probe(setting: str) -> dict[str, object]:
    env = dict(os.environ, GPT2RS_BF16_GEMM=setting)
    r = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def has_amx_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def test_the_choice_is_one_line() -> None:
    line = gpt2rs.mkl.bf16_gemm()
    assert line.startswith(("oneMKL", "f32")) and "\n" not in line


def test_a_bad_setting_is_one_value_error_at_model_construction() -> None:
    code = (
        "import gpt2rs\n"
        "try:\n"
        "    gpt2rs.GPT2LMHead({'n_layer': 1, 'n_embd': 32, 'n_head': 2, 'vocab_size': 50}, dtype='bf16')\n"
        "except ValueError as e:\n"
        "    print('ValueError', e)\n"
    )
    for setting, msg in (("onednn", "auto, mkl, f32"),) + (
        (("mkl", "not found"),) if gpt2rs.mkl.find() is None else ()
    ):
        env = dict(os.environ, GPT2RS_BF16_GEMM=setting)
        r = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("ValueError") and msg in r.stdout, r.stdout


def rel(a: list[float], b: list[float]) -> float:
    import numpy as np

    x, y = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


@pytest.mark.skipif(gpt2rs.mkl.find() is None, reason=NO_MKL)
def test_mkl_bf16_gemms_match_fp64_within_the_bf16_tolerance() -> None:
    on_mkl, widened = run_probe("mkl"), run_probe("f32")
    assert str(on_mkl["choice"]).startswith("oneMKL")
    assert str(widened["choice"]).startswith("f32")
    for dt in ("bf16", "fp32_fast_bf16"):
        err = rel(on_mkl[dt], on_mkl["fp64"])  # type: ignore[arg-type]
        assert err < 1e-2, (dt, err)
    # fp32_fast_bf16 on MKL rounds the GEMM inputs to bf16: not the f32 result.
    assert on_mkl["fp32_fast_bf16"] != widened["fp32_fast_bf16"]


@pytest.mark.skipif(not has_amx_bf16(), reason="this CPU has no AMX-BF16")
@pytest.mark.skipif(gpt2rs.mkl.find() is None, reason=NO_MKL)
def test_amx_cpus_default_to_mkl() -> None:
    assert str(run_probe("auto")["choice"]).startswith("oneMKL")
