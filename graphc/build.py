"""Build: find the C compiler, compile generated code into a cached shared library, load it.

Cache key = sha256(source, header, runtime headers, flags, compiler version).  Entries
live under ``$GRAPHC_CACHE_DIR`` (default ``~/.cache/graphc``); every file is written
under a temporary name and renamed into place, so concurrent builds never see a torn file.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import cffi

from graphc.codegen.c import RUNTIME_DIR
from graphc.errors import CompileError, CompilerNotFoundError

log = logging.getLogger(__name__)

BASE_FLAGS = ["-std=gnu11", "-O3", "-fPIC", "-shared", "-fno-math-errno", "-Wall", "-Wextra"]


def cache_dir() -> str:
    """Where compiled models are cached (``GRAPHC_CACHE_DIR`` overrides)."""
    return os.environ.get("GRAPHC_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "graphc"
    )


def find_compiler() -> str:
    """The C compiler: ``$CC``, else the first of cc, gcc, clang on PATH."""
    env = os.environ.get("CC")
    if env:
        path = shutil.which(shlex.split(env)[0])
        if path is None:
            raise CompilerNotFoundError(
                f"CC is set to {env!r} but that program was not found; install it or unset CC"
            )
        return env
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    raise CompilerNotFoundError(
        "no C compiler found: graphc needs one of cc, gcc or clang on PATH (or CC set); "
        "on Debian/Ubuntu: apt-get install gcc"
    )


@functools.cache
def compiler_version(cc: str) -> str:
    """First line of ``cc --version`` (part of the cache key)."""
    out = subprocess.run(shlex.split(cc) + ["--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else cc


@functools.cache
def _supports(cc: str, flag: str, code: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        result = subprocess.run(
            shlex.split(cc) + [flag, "-o", os.path.join(tmp, "probe"), src],
            capture_output=True,
            text=True,
        )
        return result.returncode == 0


def openmp_flags(cc: str) -> list[str]:
    """['-fopenmp'] when the compiler and its runtime support it, else [] (one thread)."""
    code = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    if _supports(cc, "-fopenmp", code):
        return ["-fopenmp"]
    log.warning("%s has no working OpenMP; generated code will run on one thread", cc)
    return []


def default_flags(cc: str) -> list[str]:
    """Optimization flags: -O3, -march=native where accepted, OpenMP where available."""
    flags = list(BASE_FLAGS)
    if _supports(cc, "-march=native", "int main(void){return 0;}\n"):
        flags.append("-march=native")
    # without OpenMP the pragmas are ignored on purpose; -Wall would warn about each one
    flags += openmp_flags(cc) or ["-Wno-unknown-pragmas"]
    if os.environ.get("GRAPHC_WERROR"):
        flags.append("-Werror")
    return flags


@dataclass(frozen=True)
class Library:
    """A loaded model library and where its files are."""

    ffi: cffi.FFI
    lib: object
    directory: str
    source_path: str
    header_path: str
    library_path: str
    flags: tuple[str, ...]
    compiler: str


def _atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _runtime_text() -> str:
    parts = []
    for name in sorted(os.listdir(RUNTIME_DIR)):
        with open(os.path.join(RUNTIME_DIR, name)) as f:
            parts.append(name + "\n" + f.read())
    return "\n".join(parts)


def build_c(
    name: str, source: str, header: str, cdef: str, cflags: list[str] | None = None
) -> Library:
    """Compile (or fetch from the cache) and load a generated model."""
    cc = find_compiler()
    flags = list(cflags) if cflags is not None else default_flags(cc)
    key = hashlib.sha256(
        "\0".join([source, header, _runtime_text(), " ".join(flags), compiler_version(cc)]).encode()
    ).hexdigest()[:24]
    directory = os.path.join(cache_dir(), f"{name}-{key}")
    source_path = os.path.join(directory, f"{name}.c")
    header_path = os.path.join(directory, f"{name}.h")
    library_path = os.path.join(directory, f"lib{name}.so")
    if not os.path.exists(library_path):
        os.makedirs(directory, exist_ok=True)
        _atomic_write(source_path, source.encode())
        _atomic_write(header_path, header.encode())
        fd, tmp_lib = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".so")
        os.close(fd)
        command = (
            shlex.split(cc)
            + flags
            + ["-I", RUNTIME_DIR, "-I", directory, "-o", tmp_lib, source_path, "-lm"]
        )
        log.info("compiling %s", " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(tmp_lib)
            raise CompileError(
                f"the C compiler failed on the generated code of model {name!r} "
                f"(command: {' '.join(command)})",
                result.stderr + result.stdout,
                source_path,
            )
        os.replace(tmp_lib, library_path)
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    lib = ffi.dlopen(library_path)
    return Library(ffi, lib, directory, source_path, header_path, library_path, tuple(flags), cc)


def clear_cache() -> int:
    """Delete every cached model; returns how many entries were removed."""
    root = cache_dir()
    if not os.path.isdir(root):
        return 0
    count = 0
    for entry in os.listdir(root):
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        count += 1
    return count
