"""Build: find the compiler, compile generated code into a cached shared library, load it.

C models build with cc/gcc/clang, CUDA models with nvcc, and the CUDA emulation (a testing
aid) with the host C++ compiler.  Cache key = sha256(source, header, runtime headers,
compiler and flags, compiler version, target).  Entries live under ``$GRAPHC_CACHE_DIR``
(default ``~/.cache/graphc``); every file is written under a temporary name and renamed
into place, so concurrent builds never see a torn file.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import cffi

from graphc.codegen.c import RUNTIME_DIR
from graphc.errors import CompileError, CompilerNotFoundError, DeviceError

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
    """Whether ``cc flag`` builds and links ``code``.  Each probe runs the compiler (tens of
    milliseconds), so its answer is kept in the cache directory, keyed by the compiler's
    command, its executable's path, size and modification time, the flag and the code: a
    later process that finds the model's library cached then starts no compiler at all."""
    exe = os.path.realpath(shutil.which(shlex.split(cc)[0]) or shlex.split(cc)[0])
    try:
        stat = os.stat(exe)
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        stamp = "?"
    key = hashlib.sha256("\0".join([cc, exe, stamp, flag, code]).encode()).hexdigest()[:32]
    answer = os.path.join(cache_dir(), "probes", key)
    try:
        with open(answer) as f:
            return f.read() == "yes"
    except OSError:
        pass  # no answer kept yet: probe
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        result = subprocess.run(
            shlex.split(cc) + [flag, "-o", os.path.join(tmp, "probe"), src],
            capture_output=True,
            text=True,
        )
    supported = result.returncode == 0
    try:
        os.makedirs(os.path.dirname(answer), exist_ok=True)
        _atomic_write(answer, b"yes" if supported else b"no")
    except OSError:
        pass  # a read-only cache only costs the next process the probe again
    return supported


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
    #: 'c', 'cuda' or 'cuda-emu': where the model's tensors live and how Python reaches them
    target: str = "c"


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


def _compile_cached(
    name: str,
    source: str,
    header: str,
    cdef: str,
    compiler: list[str],
    version: str,
    flags: list[str],
    extension: str,
    libraries: list[str],
    target: str,
    load: bool = True,
) -> Library:
    """Compile ``source`` (or find it in the cache) into lib<name>.so, and load it."""
    key = hashlib.sha256(
        "\0".join(
            [source, header, _runtime_text(), " ".join(compiler + flags), version, target]
        ).encode()
    ).hexdigest()[:24]
    directory = os.path.join(cache_dir(), f"{name}-{key}")
    source_path = os.path.join(directory, f"{name}.{extension}")
    header_path = os.path.join(directory, f"{name}.h")
    library_path = os.path.join(directory, f"lib{name}.so")
    if not os.path.exists(library_path):
        os.makedirs(directory, exist_ok=True)
        _atomic_write(source_path, source.encode())
        _atomic_write(header_path, header.encode())
        fd, tmp_lib = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".so")
        os.close(fd)
        command = (
            compiler
            + flags
            + ["-I", RUNTIME_DIR, "-I", directory, "-o", tmp_lib, source_path]
            + libraries
        )
        log.info("compiling %s", " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(tmp_lib)
            raise CompileError(
                f"the {'C' if target == 'c' else 'CUDA'} compiler failed on the generated code "
                f"of model {name!r} (command: {' '.join(command)})",
                result.stderr + result.stdout,
                source_path,
            )
        os.replace(tmp_lib, library_path)
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    # RTLD_NODELETE: a model library (and with it the OpenMP runtime it links) stays
    # mapped after its Model is gone.  Unmapped, libgomp's pool threads, which outlive
    # the model, would run unmapped code: seen as a SIGSEGV at exit with
    # OMP_WAIT_POLICY=active, and possible whenever the last model is freed.
    lib = ffi.dlopen(library_path, ffi.RTLD_NOW | ffi.RTLD_NODELETE) if load else None
    return Library(
        ffi,
        lib,
        directory,
        source_path,
        header_path,
        library_path,
        tuple(flags),
        " ".join(compiler),
        target,
    )


def build_c(
    name: str, source: str, header: str, cdef: str, cflags: list[str] | None = None
) -> Library:
    """Compile (or fetch from the cache) and load a generated model."""
    cc = find_compiler()
    flags = list(cflags) if cflags is not None else default_flags(cc)
    return _compile_cached(
        name, source, header, cdef, shlex.split(cc), compiler_version(cc), flags, "c", ["-lm"], "c"
    )


# --- CUDA -----------------------------------------------------------------------------------
#: the architecture when nvcc finds no GPU to target (-arch=native): Hopper
FALLBACK_ARCH = "sm_90"


def find_nvcc() -> str:
    """The CUDA compiler: ``$NVCC``, else nvcc on PATH or in /usr/local/cuda/bin."""
    env = os.environ.get("NVCC")
    if env:
        if shutil.which(shlex.split(env)[0]) is None:
            raise CompilerNotFoundError(
                f"NVCC is set to {env!r} but that program was not found; install the CUDA "
                "toolkit or unset NVCC"
            )
        return env
    found = shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")
    if found is None:
        raise CompilerNotFoundError(
            "target='cuda' needs nvcc, the CUDA toolkit's compiler, on PATH (or NVCC set); "
            "to run the generated kernels on the CPU instead, use target='cuda-emu'"
        )
    return found


def find_cxx() -> str:
    """The host C++ compiler of the CUDA emulation: ``$CXX``, else c++, g++ or clang++."""
    env = os.environ.get("CXX")
    if env:
        if shutil.which(shlex.split(env)[0]) is None:
            raise CompilerNotFoundError(
                f"CXX is set to {env!r} but that program was not found; install it or unset CXX"
            )
        return env
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return name
    raise CompilerNotFoundError(
        "target='cuda-emu' needs a C++ compiler with OpenMP (c++, g++ or clang++ on PATH, or "
        "CXX set); on Debian/Ubuntu: apt-get install g++"
    )


@functools.cache
def cuda_arch_flags(nvcc: str) -> tuple[str, ...]:
    """``-arch`` for nvcc: $GRAPHC_CUDA_ARCH, else the GPU of this machine, else sm_90."""
    arch = os.environ.get("GRAPHC_CUDA_ARCH")
    if arch:
        return (f"-arch={arch}",)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        with open(src, "w") as f:
            f.write("__global__ void probe(float *x) { x[0] = 1.0f; }\n")
        result = subprocess.run(
            shlex.split(nvcc) + ["-arch=native", "-c", "-o", os.path.join(tmp, "probe.o"), src],
            capture_output=True,
            text=True,
        )
    # without a GPU nvcc warns and compiles for its default: name a definite one instead
    if result.returncode == 0 and "Cannot find valid GPU" not in result.stderr + result.stdout:
        return ("-arch=native",)
    return (f"-arch={FALLBACK_ARCH}",)


def cuda_flags(nvcc: str) -> list[str]:
    """nvcc flags: -O3, a shared library of position-independent code, warnings on."""
    flags = ["-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC,-Wall,-Wextra"]
    flags += list(cuda_arch_flags(nvcc))
    if os.environ.get("GRAPHC_WERROR"):
        flags += ["-Werror", "all-warnings", "-Xcompiler", "-Werror"]
    return flags


def emulation_flags() -> list[str]:
    """Host C++ flags of target='cuda-emu': the .cu file as C++ with the emulation header."""
    flags = ["-x", "c++", "-std=c++17", "-O2", "-fPIC", "-shared", "-fopenmp", "-DGC_CUDA_EMU"]
    flags += ["-Wall", "-Wextra"]
    if os.environ.get("GRAPHC_WERROR"):
        flags.append("-Werror")
    return flags


def cuda_device_error() -> str | None:
    """Why no CUDA device can run a model here (None when one can): asks the driver."""
    import ctypes

    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver is installed (libcuda.so.1 was not found)"
    status = driver.cuInit(0)
    if status != 0:
        return f"the NVIDIA driver did not start (cuInit returned error {status})"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return "the NVIDIA driver lists no CUDA device"
    return None


def build_cuda(
    name: str,
    source: str,
    header: str,
    cdef: str,
    emulate: bool = False,
    flags: list[str] | None = None,
    load: bool = True,
) -> Library:
    """Compile a generated CUDA model with nvcc (or, emulated, as C++ for the CPU) and load it.

    ``load=False`` only compiles (and caches): tests check the generated CUDA compiles on a
    machine without a GPU.
    """
    if emulate:
        cxx = find_cxx()
        chosen = list(flags) if flags is not None else emulation_flags()
        return _compile_cached(
            name,
            source,
            header,
            cdef,
            shlex.split(cxx),
            compiler_version(cxx),
            chosen,
            "cu",
            ["-lm"],
            "cuda-emu",
            load,
        )
    nvcc = find_nvcc()
    if load:
        reason = cuda_device_error()
        if reason is not None:
            raise DeviceError(
                f"model {name!r} cannot run on a GPU here: {reason}; target='cuda-emu' runs "
                "the same kernels on the CPU"
            )
    chosen = list(flags) if flags is not None else cuda_flags(nvcc)
    return _compile_cached(
        name,
        source,
        header,
        cdef,
        shlex.split(nvcc),
        compiler_version(nvcc),
        chosen,
        "cu",
        [],
        "cuda",
        load,
    )


#: what the cache keeps beside the models: compiler probes, compiled templates, plans
CACHE_AIDS = ("probes", "templates", "plans")


def load_plan(key: str) -> Any:
    """The record ``store_plan`` kept under ``key``, or None when there is none or it cannot
    be read back whole (a torn or foreign file is ignored and later replaced)."""
    path = os.path.join(cache_dir(), "plans", key + ".pickle")
    try:
        with open(path, "rb") as f:
            record = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - any unreadable record is only a cache miss
        log.info("ignoring an unreadable cached plan %s", path)
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def store_plan(key: str, record: dict) -> None:
    """Keep a compile's plan and rendered sources under ``key`` (best effort)."""
    try:
        os.makedirs(os.path.join(cache_dir(), "plans"), exist_ok=True)
        data = pickle.dumps({**record, "key": key}, protocol=pickle.HIGHEST_PROTOCOL)
        _atomic_write(os.path.join(cache_dir(), "plans", key + ".pickle"), data)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        log.info("could not keep the plan of %s in the cache", key)


def clear_cache() -> int:
    """Delete every cached model, and the compiler probes, compiled templates and plans
    kept beside them; returns how many models were removed."""
    root = cache_dir()
    if not os.path.isdir(root):
        return 0
    count = 0
    for entry in os.listdir(root):
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        count += entry not in CACHE_AIDS
    return count
