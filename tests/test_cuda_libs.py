"""gpt2rs.cuda's library identity: which CUDA library files are mapped into
the process (/proc/self/maps), the one-line error when a library is loaded
from two files or not from the pip wheel's, the bare-name prediction (a CUDA
toolkit's ``libnvrtc.so`` on the loader's path), the link folder that fixes
it, and ``info()``. Fake maps text for the parsing and the check; NVRTC from
the ``test`` extra for the real cases (no GPU needed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpt2rs import cuda, cuda_libraries

WHEEL = "/venv/lib/python3.12/site-packages/nvidia/cu13/lib"
TOOLKIT = "/usr/local/cuda-13.0/targets/x86_64-linux/lib"


def maps_line(path: str, inode: int, dev: str = "fd:01", perms: str = "r-xp") -> str:
    return f"7f0000000000-7f0000001000 {perms} 00000000 {dev} {inode}                 {path}"


def fake_maps(*files: tuple[str, int]) -> str:
    """Maps text with each file mapped in two segments, among unrelated lines."""
    lines = [
        "55d000000000-55d000001000 r--p 00000000 fd:01 11 /usr/bin/python3.12",
        "55d000002000-55d000003000 rw-p 00000000 00:00 0                          [heap]",
        "7f1000000000-7f1000001000 rw-p 00000000 00:00 0 ",
        maps_line("/usr/lib/x86_64-linux-gnu/libc.so.6", 12),
        maps_line(f"{WHEEL}/libcudnn.so.9", 13),  # not one of the listed libraries
    ]
    for path, inode in files:
        lines += [maps_line(path, inode, perms="r--p"), maps_line(path, inode)]
    lines.append("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]")
    return "\n".join(lines) + "\n"


WHEEL_FILES = {
    "nvrtc": f"{WHEEL}/libnvrtc.so.13",
    "nvrtc-builtins": f"{WHEEL}/libnvrtc-builtins.so.13.0",
    "cublasLt": f"{WHEEL}/libcublasLt.so.13",
    "cublas": f"{WHEEL}/libcublas.so.13",
}


def good_maps() -> str:
    return fake_maps(
        *[(p, 100 + i) for i, p in enumerate(WHEEL_FILES.values())],
        ("/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.03", 200),
    )


def no_bare_names(bare: str) -> str | None:
    return None


@pytest.fixture(autouse=True)
def no_loader_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix an error names comes from the files in it, not from this
    machine's loader cache (which may hold a CUDA toolkit)."""
    monkeypatch.setattr(cuda_libraries, "_search_path_file", lambda bare: None)


# ---------------------------------------------------------------- parsing


def test_loaded_libraries_parses_maps() -> None:
    text = fake_maps(
        (f"{WHEEL}/libnvrtc.so.13", 1),
        (f"{WHEEL}/libnvrtc-builtins.so.13.0", 2),
        (f"{WHEEL}/libcublasLt.so.13", 3),
        (f"{WHEEL}/libcublas.so.13", 4),
        (f"{WHEEL}/libcudart.so.13", 5),
        ("/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.03", 6),
        ("/opt/site packages/nvidia/nccl/lib/libnccl.so.2", 7),  # a space in the path
    )
    assert cuda.loaded_libraries(text) == {
        "nvrtc": [f"{WHEEL}/libnvrtc.so.13"],
        "nvrtc-builtins": [f"{WHEEL}/libnvrtc-builtins.so.13.0"],
        "cublasLt": [f"{WHEEL}/libcublasLt.so.13"],
        "cublas": [f"{WHEEL}/libcublas.so.13"],
        "cudart": [f"{WHEEL}/libcudart.so.13"],
        "cuda": ["/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.03"],
        "nccl": ["/opt/site packages/nvidia/nccl/lib/libnccl.so.2"],
    }


def test_loaded_libraries_one_file_per_inode_alt_and_deleted() -> None:
    text = fake_maps(
        (f"{WHEEL}/libnvrtc.so.13", 1),
        ("/mnt/bind/nvidia/cu13/lib/libnvrtc.so.13", 1),  # the same file by another path
        (f"{WHEEL}/libnvrtc.alt.so.13", 2),  # the .alt variant is NVRTC too
        (f"{TOOLKIT}/libcublas.so.13.1.0.3 (deleted)", 3),
        ("/usr/lib/libcudadebugger.so.1", 4),  # not libcuda
        ("/tmp/libnvrtc.so.13.txt", 5),  # not a library
    )
    assert cuda.loaded_libraries(text) == {
        "nvrtc": [f"{WHEEL}/libnvrtc.so.13", f"{WHEEL}/libnvrtc.alt.so.13"],
        "cublas": [f"{TOOLKIT}/libcublas.so.13.1.0.3"],
    }


def test_loaded_libraries_empty_and_this_process() -> None:
    assert cuda.loaded_libraries("") == {}
    mine = cuda.loaded_libraries()  # this process's maps: whatever is loaded, parsed
    assert all(isinstance(p, str) and p.startswith("/") for ps in mine.values() for p in ps)


# ---------------------------------------------------------------- the check


def check(maps: str, resolve=no_bare_names, preloaded: dict[str, str] | None = None) -> None:
    cuda.check_library_identity(
        maps, preloaded=WHEEL_FILES if preloaded is None else preloaded, resolve=resolve
    )


def test_check_passes_with_the_wheels_files() -> None:
    check(good_maps())
    check("")  # nothing loaded yet
    # cudart and NCCL are listed, not checked: torch may bring its own.
    check(good_maps() + fake_maps((f"{WHEEL}/libcudart.so.13", 7), (f"{TOOLKIT}/libcudart.so", 8)))


def test_check_passes_without_wheels_on_one_toolkit() -> None:
    check(fake_maps((f"{TOOLKIT}/libnvrtc.so.13.0.88", 1)), preloaded={})


def one_line_error(maps: str, **kw: object) -> str:
    with pytest.raises(cuda.CudaError) as e:
        check(maps, **kw)  # type: ignore[arg-type]
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("CUDA library identity: ")
    assert "fix: " in msg and "off the loader's path" in msg
    return msg


def test_two_files_of_one_library_fail() -> None:
    msg = one_line_error(good_maps() + fake_maps((f"{TOOLKIT}/libcublas.so.13.1.0.3", 300)))
    assert "cublas is loaded from 2 files" in msg
    assert f"{WHEEL}/libcublas.so.13 (the pip wheel's, preloaded by gpt2rs)" in msg
    assert f"{TOOLKIT}/libcublas.so.13.1.0.3" in msg
    assert f"take {TOOLKIT} off the loader's path" in msg and "link_dir()" in msg


def test_two_files_fail_without_wheels_too() -> None:
    maps = fake_maps(
        ("/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.03", 1),
        ("/usr/local/cuda/compat/libcuda.so.590.10", 2),
    )
    msg = one_line_error(maps, preloaded={})
    assert "cuda is loaded from 2 files" in msg and "compat/libcuda.so.590.10" in msg
    assert "link_dir()" not in msg  # the links serve only the names cudarc asks for bare
    assert "take /usr/local/cuda/compat off the loader's path" in msg


def test_another_file_than_the_wheels_fails() -> None:
    text = good_maps().replace(f"{WHEEL}/libcublasLt.so.13", f"{TOOLKIT}/libcublasLt.so.13.1")
    msg = one_line_error(text)
    assert f"cublasLt is loaded from {TOOLKIT}/libcublasLt.so.13.1" in msg
    assert f"not from the pip wheel's {WHEEL}/libcublasLt.so.13" in msg


def test_a_bare_name_on_the_loaders_path_fails_before_it_is_loaded() -> None:
    asked: list[str] = []

    def toolkit_cublas(bare: str) -> str | None:
        asked.append(bare)
        return f"{TOOLKIT}/libcublas.so" if bare == "libcublas.so" else None

    msg = one_line_error(good_maps(), resolve=toolkit_cublas)
    assert "the core would load libcublas.so from" in msg
    assert f"{TOOLKIT}/libcublas.so" in msg and WHEEL_FILES["cublas"] in msg
    assert "cudarc tries libcublas.so before libcublas.so.13" in msg
    assert asked == ["libnvrtc.so", "libcublas.so"]
    # Only the names of libraries the wheels provided are asked for.
    asked.clear()
    check(good_maps(), resolve=toolkit_cublas, preloaded={"nvrtc": WHEEL_FILES["nvrtc"]})
    assert asked == ["libnvrtc.so"]


# ---------------------------------------------------------------- where it runs


def test_device_count_checks_only_when_a_gpu_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise cuda.CudaError("CUDA library identity: broken")

    monkeypatch.setattr(cuda, "_verify", broken)
    monkeypatch.setattr(cuda, "cuda_device_count", lambda: 0)
    assert cuda.device_count() == 0  # no GPU: costs nothing, never raises
    monkeypatch.setattr(cuda, "cuda_device_count", lambda: 1)
    with pytest.raises(cuda.CudaError, match="identity"):
        cuda.device_count()
    # choose_gpus goes through device_count: a training run stops with the line.
    monkeypatch.setattr(cuda, "unavailable_reason", lambda: None)
    with pytest.raises(cuda.CudaError, match="identity"):
        cuda.choose_gpus(None, None)


@pytest.mark.parametrize(
    "nvrtc,driver,fails",
    [((13, 0), (13, 0), False), ((13, 2), (13, 0), True), ((13, 0), (13, 1), False)],
)
def test_nvrtc_newer_than_the_driver_fails(
    monkeypatch: pytest.MonkeyPatch, nvrtc: tuple[int, int], driver: tuple[int, int], fails: bool
) -> None:
    monkeypatch.setattr(cuda, "_driver_version", lambda: driver)
    monkeypatch.setattr(cuda, "cuda_nvrtc_status", lambda: None)
    monkeypatch.setattr(cuda, "cuda_nvrtc_version", lambda: nvrtc)
    if fails:
        with pytest.raises(cuda.CudaError, match=r"nvidia-cuda-nvrtc==13\.0\.\*"):
            cuda._check_nvrtc_against_driver()
    else:
        cuda._check_nvrtc_against_driver()


def test_link_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {}
    for name, path in WHEEL_FILES.items():
        f = tmp_path / "wheel" / Path(path).name
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"")
        files[name] = str(f)
    monkeypatch.setattr(cuda_libraries, "_loaded", files)
    d = Path(cuda.link_dir(tmp_path / "links"))
    assert sorted(p.name for p in d.iterdir()) == ["libcublas.so", "libcublasLt.so", "libnvrtc.so"]
    assert os.readlink(d / "libcublasLt.so") == files["cublasLt"]
    assert cuda.link_dir(d) == str(d)  # again: the links are replaced


# ---------------------------------------------------------------- the real NVRTC


@pytest.fixture(scope="module")
def nvrtc_wheel() -> str:
    path = cuda.preload().get("nvrtc")
    if path is None or cuda.cuda_nvrtc_status() is not None:
        pytest.skip("NVRTC wheel absent (pip install 'nvidia-cuda-nvrtc>=13.0,<14')")
    return path


def test_compiling_loads_the_wheels_nvrtc(nvrtc_wheel: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GPT2RS_CUDA_CACHE", str(tmp_path))
    cuda.compile_module("bias.cu", "sm_80")  # runs the check itself
    assert cuda.loaded_libraries()["nvrtc"] == [os.path.realpath(nvrtc_wheel)]
    cuda.check_library_identity()
    got = cuda.info()
    assert got["nvrtc_version"] == "{}.{}".format(*cuda.nvrtc_version())
    assert got["preloaded"]["nvrtc"] == nvrtc_wheel  # type: ignore[index]
    assert got["loaded"]["nvrtc"] == [os.path.realpath(nvrtc_wheel)]  # type: ignore[index]
    assert got["problem"] is None and got["cache_dir"] == str(tmp_path)
    if cuda.device_count() == 0:
        assert got["device_count"] == 0 and "driver" in str(got["driver_status"])


PROBE = textwrap.dedent(
    """
    from gpt2rs import cuda
    try:
        cuda.check_library_identity()
        print("before: ok")
    except cuda.CudaError as e:
        print("before:", e)
    try:
        cuda.compile_module("bias.cu", "sm_80")
        print("after: ok")
    except cuda.CudaError as e:
        print("after:", e)
    print("nvrtc:", cuda.loaded_libraries()["nvrtc"])
    """
)


def test_a_toolkit_nvrtc_on_the_loaders_path(nvrtc_wheel: str, tmp_path: Path) -> None:
    """A "toolkit" folder whose libnvrtc.so is another NVRTC file: the check
    names it before the core loads it, and again once the core has; the link
    folder first on LD_LIBRARY_PATH makes the core take the wheel's file."""
    other = Path(nvrtc_wheel).with_name("libnvrtc.alt.so.13")
    if not other.exists():
        pytest.skip(f"no second NVRTC file to play the toolkit's ({other})")
    toolkit = tmp_path / "toolkit"
    toolkit.mkdir()
    (toolkit / "libnvrtc.so").symlink_to(other)
    links = cuda.link_dir(tmp_path / "links")

    def run(ld_path: str) -> str:
        env = dict(os.environ, LD_LIBRARY_PATH=ld_path, GPT2RS_CUDA_CACHE=str(tmp_path / "c"))
        r = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = run(str(toolkit))
    assert f"before: CUDA library identity: the core would load libnvrtc.so from {toolkit}" in out
    assert "after: CUDA library identity: nvrtc is loaded from 2 files" in out
    assert str(other) in out and f"take {toolkit} off the loader's path" in out

    out = run(f"{links}:{toolkit}")
    assert "before: ok" in out and "after: ok" in out
    assert f"nvrtc: ['{os.path.realpath(nvrtc_wheel)}']" in out
