"""gpt2rs.cuda without a GPU: every kernel module compiles with NVRTC (from the
``nvidia-cuda-nvrtc`` wheel in the ``test`` extra) for sm_80 and sm_90, the
disk cache hits, compile errors are clear, and a missing GPU is an error value.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpt2rs import cuda


@pytest.fixture(scope="module")
def nvrtc() -> None:
    cuda.preload()
    from gpt2rs._gpt2rs import cuda_nvrtc_status

    reason = cuda_nvrtc_status()
    if reason is not None:
        pytest.skip(f"NVRTC wheel absent (pip install 'nvidia-cuda-nvrtc>=13.0,<14'): {reason}")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2RS_CUDA_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_module_compiles(nvrtc, cache, arch: str) -> None:
    out = cuda.compile_all(arch)
    assert [f for f, _ in out] == cuda.modules()
    assert all(size > 1000 for _, size in out), out
    assert len(list(cache.glob(f"*-{arch}-*.ptx"))) == len(out)


@pytest.mark.parametrize(
    "module,kernels",
    [
        (
            "elementwise.cu",
            ["fill_bf16", "axpy_f16", "add_f64", "cast_f64_bf16", "cast_bf16_f32"],
        ),
        (
            "reduce.cu",
            [
                "sum_axis_f32",
                "sum_all_bf16",
                "ssq_update_f16",
                "add_col_parts_f32",
                "add_col_parts_bf16",
            ],
        ),
        (
            "activation.cu",
            ["gelu_fwd_bf16", "gelu_bwd_f32", "gelu_exact_bwd_f64", "relu_bwd_f16"],
        ),
        ("bias.cu", ["bias_fill_f32", "bias_add_bf16", "bias_grad_part_bf16"]),
        (
            "embedding.cu",
            [
                "embedding_rows_fwd_f16",
                "embedding_bwd_sorted_bf16_bf16",
                "embedding_bwd_sorted_bf16_f32",
            ],
        ),
        (
            "layernorm.cu",
            [
                "layernorm_stats_update_bf16",
                "layernorm_stats_finalize_f32",
                "layernorm_fwd_f16",
                "layernorm_bwd_reduce_f32",
                "layernorm_bwd_f64",
                "layernorm_param_grad_part_bf16",
            ],
        ),
        (
            "crossentropy.cu",
            [
                "maxsumexp_update_bf16",
                "ce_loss_target_f32",
                "ce_loss_lse_f32",
                "ce_bwd_f16",
            ],
        ),
        ("optim.cu", ["adam_step_f32_bf16", "adam_step_f64_f64", "sgd_step_f32_f32"]),
        (
            "attention.cu",
            [
                "attn_fwd_init_f32",
                "flash_fwd_bf16",
                "attn_fwd_finalize_bf16",
                "attn_bwd_delta_f32",
                "flash_bwd_f16",
            ],
        ),
    ],
)
def test_kernels_are_exported_by_name(nvrtc, cache, module: str, kernels: list[str]) -> None:
    ptx, _ = cuda.compile_module(module, "sm_80")
    for k in kernels:
        assert f".entry {k}(" in ptx, f"{k} missing from {module}"


def test_cache_hits_on_second_call(nvrtc, cache) -> None:
    ptx1, cached1 = cuda.compile_module("layernorm.cu", "sm_90")
    ptx2, cached2 = cuda.compile_module("layernorm.cu", "sm_90")
    assert (cached1, cached2) == (False, True)
    assert ptx1 == ptx2
    # Another architecture is another cache entry.
    _, cached3 = cuda.compile_module("layernorm.cu", "sm_80")
    assert not cached3


def test_syntax_error_names_file_and_log(nvrtc, cache) -> None:
    src = 'extern "C" __global__ void broken(float* x) { x[0] = undefined_name; }\n'
    with pytest.raises(cuda.CudaError) as e:
        cuda.compile_source("broken.cu", src, "sm_80")
    msg = str(e.value)
    assert "broken.cu" in msg
    assert "undefined_name" in msg  # NVRTC's log
    assert "error" in msg


def test_bad_architecture_is_a_value_error(nvrtc) -> None:
    with pytest.raises(ValueError, match="sm_XY"):
        cuda.compile_all("hopper")


def test_unavailable_here_is_a_reason_not_a_crash() -> None:
    reason = cuda.unavailable_reason()
    if reason is None:
        pytest.skip("a CUDA driver and GPU are present")
    assert not cuda.is_available()
    assert "CUDA" in reason
    with pytest.raises(cuda.CudaError, match="CUDA was required"):
        cuda.require()


def test_missing_nvrtc_is_an_error_not_a_crash() -> None:
    # Without the preload (and unless the system has libnvrtc), the core
    # reports NVRTC as missing: an exception, never a panic or abort.
    code = (
        "import gpt2rs._gpt2rs as m\n"
        "try:\n"
        "    m.cuda_compile_all('sm_80'); print('compiled')\n"
        "except m.CudaError as e:\n"
        "    assert 'NVRTC' in str(e), e; print('error')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("compiled", "error")


@pytest.mark.parametrize(
    "restrict,ncuda,visible,want",
    [
        (None, None, 0, (0, "notice")),
        (None, None, 2, (2, None)),
        ("cuda", None, 1, (1, None)),
        (None, 1, 2, (1, None)),
        ("cpu", None, 2, (0, None)),
        (None, 0, 2, (0, None)),
        ("cuda", None, 0, "CudaError"),
        (None, 3, 2, "CudaError"),
        ("cuda", 0, 2, "ValueError"),
        ("cpu", 1, 2, "ValueError"),
        (None, -1, 2, "ValueError"),
    ],
)
def test_choose_gpus(
    monkeypatch: pytest.MonkeyPatch,
    restrict: str | None,
    ncuda: int | None,
    visible: int,
    want: object,
) -> None:
    monkeypatch.setattr(cuda, "unavailable_reason", lambda: None if visible else "no driver here")
    monkeypatch.setattr(cuda, "device_count", lambda: visible)
    if want == "CudaError":
        with pytest.raises(cuda.CudaError, match="CUDA is not available"):
            cuda.choose_gpus(restrict, ncuda)
    elif want == "ValueError":
        with pytest.raises(ValueError):
            cuda.choose_gpus(restrict, ncuda)
    else:
        n, notice = cuda.choose_gpus(restrict, ncuda)
        assert (n, "notice" if notice else None) == want
        if notice:
            assert "no driver here" in notice
