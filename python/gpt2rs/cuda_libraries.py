"""Which CUDA library files gpt2rs loads: the pip wheels' (``preload``), what
``/proc/self/maps`` says is mapped (``loaded_libraries``), and the check that
the core uses one file per library, the wheel's (``check_library_identity``,
with ``link_dir`` as its fix). `gpt2rs.cuda` re-exports the public names.

cudarc, the core's loader, asks for the bare names ``libnvrtc.so``,
``libcublas.so``, ``libcublasLt.so`` before ``*.so.13``; where a CUDA toolkit
puts those names on the loader's path it would load the toolkit's copies
beside the wheels' files.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from gpt2rs._gpt2rs import CudaError, cuda_cache_dir

# (library stem, soname glob) in load order. libnvrtc dlopen()s its builtins
# by bare name at compile time, so they are preloaded too; cuBLASLt before
# cuBLAS. The wheels' `.alt.` variants are skipped.
_LIBS = (
    ("nvrtc-builtins", "libnvrtc-builtins.so.13*"),
    ("nvrtc", "libnvrtc.so.13*"),
    ("cublasLt", "libcublasLt.so.13*"),
    ("cublas", "libcublas.so.13*"),
)
_loaded: dict[str, str] = {}

# The libraries the core uses: one file each, or check_library_identity()
# fails. loaded_libraries() also lists cudart and NCCL (torch's and others').
_CORE_LIBS = ("nvrtc", "nvrtc-builtins", "cublas", "cublasLt", "cuda")
# The bare names cudarc's loader tries before `*.so.13` (its
# get_lib_name_candidates; the `64_NN` variants are Windows names).
_BARE = {"nvrtc": "libnvrtc.so", "cublas": "libcublas.so", "cublasLt": "libcublasLt.so"}
_LIB_FILE = re.compile(
    r"^lib(nvrtc-builtins|nvrtc|cublasLt|cublas|cudart|cuda|nccl)(?:\.alt)?\.so(?:\.[0-9.]+)?$"
)


def _lib_dirs() -> list[Path]:
    """Candidate ``nvidia/*/lib`` directories under every site-packages."""
    roots = list(sys.path)
    with contextlib.suppress(AttributeError):  # virtualenvs with an old site.py
        roots += site.getsitepackages()
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user:
        roots.append(user)
    dirs: list[Path] = []
    for root in dict.fromkeys(roots):
        for sub in ("cu13/lib", "cuda_nvrtc/lib", "cublas/lib"):
            d = Path(root or ".") / "nvidia" / sub
            if d.is_dir() and d not in dirs:
                dirs.append(d)
    return dirs


def preload() -> dict[str, str]:
    """Load the pip wheels' NVRTC and cuBLAS with RTLD_GLOBAL (once).

    A library whose soname is already in the process (torch imported first,
    say) is adopted rather than loaded a second time: the core binds to it.

    Returns:
        The libraries loaded so far, by name, with their paths. A wheel that
        is absent is skipped (the Rust core then reports it as missing).
    """
    if sys.platform != "linux":
        return dict(_loaded)
    for name, pattern in _LIBS:
        if name in _loaded:
            continue
        for d in _lib_dirs():
            hits = sorted(p for p in glob.glob(str(d / pattern)) if ".alt." not in p)
            if not hits:
                continue
            path = hits[0]
            if dlopen_noload(os.path.basename(path)) == "loaded":
                path = next(iter(_mapped().get(name, {})), path)
            else:
                try:
                    ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
                except OSError:
                    continue
            _loaded[name] = path
            break
    return dict(_loaded)


# ---------------------------------------------------------------- library identity


def _read_maps() -> str:
    try:
        return Path("/proc/self/maps").read_text()
    except OSError:  # not Linux, or no procfs
        return ""


def _mapped(maps: str | None = None) -> dict[str, dict[str, tuple[str, str]]]:
    """The CUDA library files in ``maps`` (/proc/self/maps text; read when
    None): name -> {path: (device, inode)}, each file once, in map order."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    seen: set[tuple[str, str, str]] = set()
    for line in (_read_maps() if maps is None else maps).splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        dev, inode, path = parts[3], parts[4], parts[5].removesuffix(" (deleted)")
        m = _LIB_FILE.match(os.path.basename(path))
        if m is None:
            continue
        # One file is one (device, inode) however many paths lead to it.
        key = (m.group(1), dev, inode) if inode != "0" else (m.group(1), "", path)
        if key not in seen:
            seen.add(key)
            out.setdefault(m.group(1), {})[path] = (dev, inode)
    return out


def loaded_libraries(maps: str | None = None) -> dict[str, list[str]]:
    """The CUDA library files mapped into this process, from ``/proc/self/maps``.

    Args:
        maps: the text of a maps file (default: this process's).

    Returns:
        ``{name: [path, ...]}`` for the libraries found among ``nvrtc``,
        ``nvrtc-builtins``, ``cublas``, ``cublasLt``, ``cudart``, ``cuda`` (the
        driver) and ``nccl``; more than one path for a name means two different
        files of that library (``.alt`` variants count as the library).
    """
    return {name: list(files) for name, files in _mapped(maps).items()}


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def dlopen_noload(name: str) -> str:
    """What the dynamic loader would do with ``dlopen(name)``, without loading
    anything: "loaded" (it names an object already in the process), "unloaded"
    (it finds a file that is not loaded: dlopen would load it) or "absent"."""
    if sys.platform != "linux":
        return "absent"
    try:
        libc = ctypes.CDLL(None)
        dlopen, dlerror, dlclose = libc.dlopen, libc.dlerror, libc.dlclose
    except (OSError, AttributeError):
        return "absent"
    dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
    dlerror.restype, dlerror.argtypes = ctypes.c_char_p, []
    dlclose.argtypes = [ctypes.c_void_p]
    dlerror()
    handle = dlopen(name.encode(), os.RTLD_NOLOAD | os.RTLD_LAZY)
    if handle:
        dlclose(handle)
        return "loaded"
    # glibc: a file found but not loaded fails RTLD_NOLOAD without an error
    # message; a name found nowhere sets one.
    return "absent" if dlerror() else "unloaded"


def _search_path_file(bare: str) -> str | None:
    """Where the loader finds ``bare`` (LD_LIBRARY_PATH, then ``ldconfig -p``),
    for an error message; None if neither has it."""
    for d in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
        if d and os.path.exists(os.path.join(d, bare)):
            return os.path.join(d, bare)
    ldconfig = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None
    )
    if ldconfig:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [ldconfig, "-p"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            for line in out.splitlines():
                if line.strip().startswith(bare + " ") and "=>" in line:
                    return line.split("=>", 1)[1].strip()
    return None


def _fix(name: str, other: str) -> str:
    """The fix for a library identity error: the links (for a name cudarc
    asks for bare), or the other file's folder off the loader's path."""
    bare = _BARE.get(name)
    found = _search_path_file(bare) if bare else None
    off = (
        f"take {os.path.dirname(found or other)} off the loader's path (LD_LIBRARY_PATH, ldconfig)"
    )
    if bare is None:
        return f"fix: {off}"
    return (
        "fix: export LD_LIBRARY_PATH=\"$(python3 -c 'from gpt2rs import cuda; "
        f"print(cuda.link_dir())'):$LD_LIBRARY_PATH\" (links from {bare} to the wheel's files) "
        f"before starting Python, or {off}"
    )


def check_library_identity(
    maps: str | None = None,
    *,
    preloaded: dict[str, str] | None = None,
    resolve: Callable[[str], str | None] | None = None,
) -> None:
    """Fail with one line unless gpt2rs uses exactly one file per CUDA library,
    the pip wheel's where :func:`preload` loaded one.

    Three checks, over ``/proc/self/maps`` and the loader's search path:

    - each library the core uses (NVRTC and its builtins, cuBLAS, cuBLASLt,
      the driver) is mapped from one file;
    - a library the wheels provide is mapped from the file :func:`preload`
      loaded;
    - the bare names cudarc tries first (``libnvrtc.so``, ``libcublas.so``,
      ``libcublasLt.so``) do not lead the loader to another file, which the
      core would load beside the wheel's (a CUDA toolkit in the loader cache).

    Args:
        maps: maps text (default: this process's /proc/self/maps).
        preloaded: name -> path of the wheels' files (default: :func:`preload`'s).
        resolve: for a bare name, the file dlopen() would load beside those in
            the process, or None if it loads none (default: asks the loader).

    Raises:
        CudaError: one line naming both files and the fix.
    """
    wheel = dict(_loaded) if preloaded is None else preloaded
    mapped = _mapped(maps)
    for name in _CORE_LIBS:
        files = list(mapped.get(name, {}))
        mine = wheel.get(name)
        if len(files) > 1:
            ours = [f for f in files if mine and _same_file(f, mine)]
            first = ours[0] if ours else files[0]
            other = next(f for f in files if f != first)
            role = " (the pip wheel's, preloaded by gpt2rs)" if ours else ""
            raise CudaError(
                f"CUDA library identity: {name} is loaded from {len(files)} files, "
                f"{first}{role} and {other}; {_fix(name, other)}"
            )
        if mine and files and not _same_file(files[0], mine):
            raise CudaError(
                f"CUDA library identity: {name} is loaded from {files[0]}, not from the pip "
                f"wheel's {mine} that gpt2rs preloaded; {_fix(name, files[0])}"
            )
    for name, bare in _BARE.items():
        mine = wheel.get(name)
        if not mine:
            continue
        found = (resolve or _resolve_bare)(bare)
        if found is not None:
            raise CudaError(
                f"CUDA library identity: the core would load {bare} from {found} beside the "
                f"pip wheel's {mine} that gpt2rs preloaded (cudarc tries {bare} before "
                f"{os.path.basename(mine)}); {_fix(name, found)}"
            )


def _resolve_bare(bare: str) -> str | None:
    if dlopen_noload(bare) != "unloaded":
        return None
    found = _search_path_file(bare)
    if found is None:
        return f"a {bare} on the loader's search path"
    real = os.path.realpath(found)
    return found if real == found else f"{found} (= {real})"


def link_dir(path: str | os.PathLike[str] | None = None) -> str:
    """A folder of links from the bare names cudarc asks for first
    (``libnvrtc.so``, ``libcublas.so``, ``libcublasLt.so``) to the wheels'
    files :func:`preload` loaded. With it first on ``LD_LIBRARY_PATH`` (set
    before Python starts: the loader reads it once) those names lead to the
    wheels' files and not to a CUDA toolkit's copies.

    Args:
        path: the folder (default: ``lib`` in :func:`cache_dir`, else in the
            temporary folder).

    Returns:
        The folder, for ``LD_LIBRARY_PATH``.
    """
    d = Path(path) if path is not None else Path(cuda_cache_dir() or tempfile.gettempdir()) / "lib"
    d.mkdir(parents=True, exist_ok=True)
    for name, target in preload().items():
        bare = _BARE.get(name)
        if bare is None:
            continue
        tmp = d / f".{bare}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.path.realpath(target))
        os.replace(tmp, d / bare)
    return str(d)
