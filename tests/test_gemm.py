"""Tests for runtime/gc_gemm.h: correctness against numpy, determinism across thread
counts, epilogue coverage, and warning-free builds with gcc/clang, with and without
OpenMP and -march=native."""

import shutil
import subprocess
from pathlib import Path

import cffi
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "runtime"
HARNESS = Path(__file__).resolve().parent / "gemm_harness.c"
WARNINGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror"]

CDEF = """
int h_real_size(void);
int h_gemm_mr(void);
int h_openmp(void);
void h_gemm(int trans_a, int trans_b, int m, int n, int k, const void *a, int lda,
            const void *b, int ldb, int accumulate, void *c, int ldc, int nthreads,
            int *counts, void *snapshot);
void h_gemm_scaled(int trans_a, int trans_b, int m, int n, int k, double alpha, const void *a,
                   int lda, const void *b, int ldb, void *c, int ldc, int nthreads);
void h_gemm_gather(int trans_a, int trans_b, int m, int n, int k, double alpha, const void *a,
                   const int64_t *rows, int lda, const void *b, int ldb, int accumulate, void *c,
                   int ldc, int nthreads);
void h_gemm_rows(int trans_a, int trans_b, int m, int n, int k, const void *a, int lda,
                 const void *b, int ldb, int accumulate, void *c, int ldc, int nthreads,
                 int *bands);
"""

# (M, N, K): zeros, ones, odd sizes, exact micro-tiles, and sizes past every block
# (MC = 144/72, NC = 512/256, KC = 256 for float/double).
SIZES = [
    (0, 5, 7),
    (5, 0, 7),
    (5, 7, 0),
    (1, 1, 1),
    (1, 17, 3),
    (7, 1, 5),
    (3, 5, 7),
    (6, 16, 8),
    (13, 33, 29),
    (33, 7, 130),
    (130, 40, 9),
    (37, 70, 11),
    (9, 40, 520),
    (150, 530, 300),
    (5, 20, 300),  # B read in place (small), over two K blocks, a ragged last micro-panel
]

BUILDS = {
    "gcc-openmp-native": ("gcc", ["-O2", "-march=native", "-fopenmp"]),
    "gcc-portable": ("gcc", ["-O2"]),
    "gcc-scalar-transpose": ("gcc", ["-O2", "-march=native", "-fopenmp", "-DGC_GEMM_NO_SHUFFLE"]),
    "clang-openmp-native": ("clang", ["-O2", "-march=native", "-fopenmp"]),
    # a model's bound on its packed A^T block, below some SIZES: those tiles read A in place
    "gcc-apack-bound": (
        "gcc",
        ["-O2", "-march=native", "-fopenmp", "-DGC_GEMM_APACK_M=20", "-DGC_GEMM_APACK_K=100"],
    ),
}


def _compile(cc: str, flags: list[str], real: str, out: Path) -> Path:
    """Compile the harness into a shared library; fail with the compiler log."""
    cmd = [cc, *WARNINGS, *flags, "-fPIC", "-shared", f"-DGC_REAL={real}", f"-I{RUNTIME}"]
    cmd += [str(HARNESS), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return out


def _clang_openmp_reason(tmp: Path) -> str | None:
    """Why clang cannot build OpenMP code here, or None if it can."""
    if shutil.which("clang") is None:
        return "clang is not on PATH"
    probe = tmp / "probe.c"
    probe.write_text("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
    proc = subprocess.run(
        ["clang", "-fopenmp", str(probe), "-o", str(tmp / "probe")], capture_output=True
    )
    if proc.returncode != 0:
        return "clang cannot build OpenMP programs (libomp missing?)"
    return None


@pytest.fixture(scope="session")
def libs(tmp_path_factory):
    """Lazily built harness libraries, keyed by (build name, dtype)."""
    tmp = tmp_path_factory.mktemp("gemm")
    cache = {}

    def get(build: str, dtype):
        key = (build, np.dtype(dtype).name)
        if key not in cache:
            cc, flags = BUILDS[build]
            if cc == "clang":
                reason = _clang_openmp_reason(tmp)
                if reason:
                    pytest.skip(reason)
            real = "float" if np.dtype(dtype) == np.float32 else "double"
            path = _compile(cc, flags, real, tmp / f"harness_{build}_{real}.so")
            ffi = cffi.FFI()
            ffi.cdef(CDEF)
            lib = ffi.dlopen(str(path))
            assert lib.h_real_size() == np.dtype(dtype).itemsize
            cache[key] = (ffi, lib)
        return cache[key]

    return get


def _strided(rng, rows: int, cols: int, pad: int, dtype):
    """A rows x cols matrix stored with leading dimension cols + pad; returns (storage, view, ld)."""
    ld = cols + pad
    storage = rng.standard_normal((max(rows, 1), max(ld, 1))).astype(dtype)
    return storage, storage[:rows, :cols], ld


def _run(ffi, lib, ta, tb, M, N, K, a, lda, b, ldb, accumulate, c0, ldc, nthreads):
    """Run h_gemm on a copy of c0; returns (C storage, counts, snapshot)."""
    c = c0.copy()
    counts = np.zeros((max(M, 1), max(N, 1)), dtype=np.intc)
    snap = np.zeros((max(M, 1), max(N, 1)), dtype=c0.dtype)
    lib.h_gemm(
        ta, tb, M, N, K,
        ffi.from_buffer(a), lda, ffi.from_buffer(b), ldb,
        accumulate, ffi.from_buffer(c), ldc, nthreads,
        ffi.cast("int *", ffi.from_buffer(counts)), ffi.from_buffer(snap),
    )  # fmt: skip
    return c, counts[:M, :N], snap[:M, :N]


def _check_build(libs, build: str, dtype, ta: int, tb: int, thread_counts: list[int]):
    ffi, lib = libs(build, dtype)
    assert lib.h_openmp() == ("-fopenmp" in BUILDS[build][1])
    eps = np.finfo(dtype).eps
    rng = np.random.default_rng(1234 + 2 * ta + tb)
    for index, (M, N, K) in enumerate(SIZES):
        pad = 0 if index % 2 == 0 else 3
        a, a_view, lda = _strided(rng, K if ta else M, M if ta else K, pad, dtype)
        b, b_view, ldb = _strided(rng, N if tb else K, K if tb else N, pad + 1, dtype)
        op_a = (a_view.T if ta else a_view).astype(np.float64)
        op_b = (b_view.T if tb else b_view).astype(np.float64)
        c0, c0_view, ldc = _strided(rng, M, N, pad + 2, dtype)
        for accumulate in (0, 1):
            base = c0_view.astype(np.float64) if accumulate else np.zeros((M, N))
            want = base + op_a @ op_b
            bound = 2 * (K + 2) * eps * (np.abs(op_a) @ np.abs(op_b) + np.abs(base)) + 1e-300
            first = None
            for nthreads in thread_counts:
                where = f"{build} {dtype.__name__} ta={ta} tb={tb} M,N,K={M},{N},{K} "
                where += f"acc={accumulate} threads={nthreads}"
                c, counts, snap = _run(
                    ffi, lib, ta, tb, M, N, K, a, lda, b, ldb, accumulate, c0, ldc, nthreads
                )
                got = c[:M, :N]
                assert np.all(np.abs(got - want) <= bound), where
                # Storage outside the M x N view (padding of ldc) is untouched.
                outside = np.ones(c.shape, dtype=bool)
                outside[:M, :N] = False
                assert np.array_equal(c[outside], c0[outside]), where
                # Every element handed to exactly one epilogue, after it was final.
                assert np.all(counts == 1), where
                assert np.array_equal(snap, got), where
                if first is None:
                    first = got.copy()
                else:
                    assert first.tobytes() == got.tobytes(), f"not deterministic: {where}"


TRANS = [(0, 0), (0, 1), (1, 0), (1, 1)]
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("build", ["gcc-openmp-native", "gcc-portable"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_scaled(libs, build, dtype, ta, tb):
    """gc_gemm_scaled adds alpha * op(A) op(B) into C (the fused SGD step): it matches
    numpy, leaves the padding alone and is bit-identical for every thread count."""
    ffi, lib = libs(build, dtype)
    eps = np.finfo(dtype).eps
    rng = np.random.default_rng(99 + 2 * ta + tb)
    alpha = -0.0375
    for index, (M, N, K) in enumerate(SIZES):
        pad = index % 3
        a, a_view, lda = _strided(rng, K if ta else M, M if ta else K, pad, dtype)
        b, b_view, ldb = _strided(rng, N if tb else K, K if tb else N, pad + 1, dtype)
        op_a = (a_view.T if ta else a_view).astype(np.float64)
        op_b = (b_view.T if tb else b_view).astype(np.float64)
        c0, c0_view, ldc = _strided(rng, M, N, pad, dtype)
        base = c0_view.astype(np.float64)
        want = base + alpha * (op_a @ op_b)
        bound = 2 * (K + 3) * eps * (abs(alpha) * np.abs(op_a) @ np.abs(op_b) + np.abs(base))
        first = None
        for nthreads in [1, 2, 3, 0] if "openmp" in build else [0]:
            c = c0.copy()
            lib.h_gemm_scaled(
                ta, tb, M, N, K, alpha, ffi.from_buffer(a), lda, ffi.from_buffer(b), ldb,
                ffi.from_buffer(c), ldc, nthreads,
            )  # fmt: skip
            where = f"{build} {dtype.__name__} ta={ta} tb={tb} M,N,K={M},{N},{K} {nthreads}"
            assert np.all(np.abs(c[:M, :N] - want) <= bound + 1e-300), where
            outside = np.ones(c.shape, dtype=bool)
            outside[:M, :N] = False
            assert np.array_equal(c[outside], c0[outside]), where
            first = c if first is None else first
            assert first.tobytes() == c.tobytes(), f"not deterministic: {where}"


@pytest.mark.parametrize("build", ["gcc-openmp-native", "gcc-portable", "gcc-apack-bound"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_gather(libs, build, dtype, ta, tb):
    """gc_gemm_gather reads A's rows through an index (a shuffled batch, no copy): its C is
    bit-identical to gc_gemm's on a copy of the gathered rows, for every thread count, with
    and without accumulate and scale; with no index it is gc_gemm.  A gathered A^T is always
    packed: past the bounded build's 20 x 100 block it goes in pieces, bit-identical where
    only its rows are cut, and within rounding of the exact product where its K is."""
    ffi, lib = libs(build, dtype)
    eps = np.finfo(dtype).eps
    rng = np.random.default_rng(7 + 2 * ta + tb)
    for index, (M, N, K) in enumerate(SIZES):
        exact = not (build == "gcc-apack-bound" and ta and K > 100)
        pad = index % 3
        rows_stored = K if ta else M
        table, _, lda = _strided(rng, rows_stored + 9, M if ta else K, pad, dtype)
        rows = rng.permutation(rows_stored + 9)[:rows_stored].astype(np.int64)
        gathered = np.ascontiguousarray(table[rows])  # what a copy of the batch would hold
        b, _, ldb = _strided(rng, N if tb else K, K if tb else N, pad + 1, dtype)
        c0, _, ldc = _strided(rng, M, N, pad + 2, dtype)
        for accumulate, alpha in ((0, 1.0), (1, 1.0), (1, -0.0375)):
            if accumulate:
                want = c0.copy()
                lib.h_gemm_scaled(
                    ta, tb, M, N, K, alpha, ffi.from_buffer(gathered), lda,
                    ffi.from_buffer(b), ldb, ffi.from_buffer(want), ldc, 0,
                )  # fmt: skip
            else:
                want, _, _ = _run(ffi, lib, ta, tb, M, N, K, gathered, lda, b, ldb, 0, c0, ldc, 0)
            first = None
            for nthreads in [1, 2, 3, 0] if "-fopenmp" in BUILDS[build][1] else [0]:
                for index_rows in (rows, None):
                    source = table if index_rows is not None else gathered
                    c = c0.copy()
                    lib.h_gemm_gather(
                        ta, tb, M, N, K, alpha, ffi.from_buffer(source),
                        ffi.NULL if index_rows is None
                        else ffi.cast("int64_t *", ffi.from_buffer(index_rows)),
                        lda, ffi.from_buffer(b), ldb, accumulate, ffi.from_buffer(c), ldc,
                        nthreads,
                    )  # fmt: skip
                    where = f"{build} {dtype.__name__} ta={ta} tb={tb} M,N,K={M},{N},{K} "
                    where += f"acc={accumulate} alpha={alpha} threads={nthreads} "
                    where += "gathered" if index_rows is not None else "no index"
                    if exact or index_rows is None:
                        assert c.tobytes() == want.tobytes(), where
                        continue
                    op_a = gathered.astype(np.float64)[:, :M].T
                    op_b = (b[:N, :K].T if tb else b[:K, :N]).astype(np.float64)
                    base = c0[:M, :N].astype(np.float64) if accumulate else 0
                    bound = 2 * (K + 3) * eps * (abs(alpha) * np.abs(op_a) @ np.abs(op_b))
                    bound += 2 * eps * np.abs(base) + 1e-300
                    assert np.all(np.abs(c[:M, :N] - (base + alpha * op_a @ op_b)) <= bound), where
                    assert np.array_equal(c[:, N:], c0[:, N:]) and np.array_equal(c[M:], c0[M:])
                    first = c if first is None else first
                    assert first.tobytes() == c.tobytes(), f"not deterministic: {where}"


@pytest.mark.parametrize("build", ["gcc-openmp-native", "gcc-portable"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_rows(libs, build, dtype, ta, tb):
    """gc_gemm_rows (a recurrence's product: each thread its own band of rows, no barrier)
    gives gc_gemm's bits for every thread count, with and without accumulate; the bands are
    whole micro-panels of rows in thread order that cover the rows exactly once."""
    ffi, lib = libs(build, dtype)
    rng = np.random.default_rng(21 + 2 * ta + tb)
    for index, (M, N, K) in enumerate(SIZES):
        pad = index % 3
        a, _, lda = _strided(rng, K if ta else M, M if ta else K, pad, dtype)
        b, _, ldb = _strided(rng, N if tb else K, K if tb else N, pad + 1, dtype)
        c0, _, ldc = _strided(rng, M, N, pad + 2, dtype)
        for accumulate in (0, 1):
            want, _, _ = _run(ffi, lib, ta, tb, M, N, K, a, lda, b, ldb, accumulate, c0, ldc, 0)
            for nthreads in [1, 2, 3, 0] if "-fopenmp" in BUILDS[build][1] else [0]:
                c = c0.copy()
                bands = np.full(2 * max(nthreads, 1), -1, dtype=np.intc)
                lib.h_gemm_rows(
                    ta, tb, M, N, K, ffi.from_buffer(a), lda, ffi.from_buffer(b), ldb,
                    accumulate, ffi.from_buffer(c), ldc, nthreads,
                    ffi.cast("int *", ffi.from_buffer(bands)),
                )  # fmt: skip
                where = f"{build} {dtype.__name__} ta={ta} tb={tb} M,N,K={M},{N},{K} "
                where += f"acc={accumulate} threads={nthreads}"
                assert c.tobytes() == want.tobytes(), where
                starts, sizes = bands[0::2], bands[1::2]
                assert starts[0] == 0 and np.all(sizes >= 0), where
                assert np.array_equal(starts[1:], (starts + sizes)[:-1]), where
                assert starts[-1] + sizes[-1] == M, where
                assert np.all((starts % lib.h_gemm_mr() == 0) | (starts == M)), where


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_gcc_openmp(libs, dtype, ta, tb):
    """Matches numpy; bit-identical for 1, 2, 3 threads and outside a parallel region."""
    _check_build(libs, "gcc-openmp-native", dtype, ta, tb, [1, 2, 3, 0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_portable_no_openmp(libs, dtype, ta, tb):
    """Without -fopenmp and -march=native: the 128-bit vector fallback, serial."""
    _check_build(libs, "gcc-portable", dtype, ta, tb, [0, 2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_clang_openmp(libs, dtype, ta, tb):
    """clang build of the same header agrees with numpy and is deterministic."""
    _check_build(libs, "clang-openmp-native", dtype, ta, tb, [1, 2, 3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_bounded_apack_gives_the_same_bits(libs, dtype):
    """With the A^T block bounded (GC_GEMM_APACK_M/_K), tiles too big for it read A^T in
    place: every product still matches numpy, bit for bit what the unbounded build gives."""
    _check_build(libs, "gcc-apack-bound", dtype, 1, 0, [1, 2])
    rng = np.random.default_rng(3)
    for M, N, K in [(150, 530, 300), (16, 80, 64), (33, 70, 130)]:
        a = rng.standard_normal((K, M)).astype(dtype)
        b = rng.standard_normal((K, N)).astype(dtype)
        c0 = np.zeros((M, N), dtype=dtype)
        got = [
            _run(*libs(build, dtype), 1, 0, M, N, K, a, M, b, N, 0, c0, N, 2)[0]
            for build in ("gcc-apack-bound", "gcc-openmp-native")
        ]
        assert got[0].tobytes() == got[1].tobytes(), (M, N, K)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", [(0, 1), (1, 1)])
def test_gemm_scalar_transpose(libs, dtype, ta, tb):
    """The scalar B^T packing used where __builtin_shufflevector is missing."""
    _check_build(libs, "gcc-scalar-transpose", dtype, ta, tb, [1, 2])


FLAG_SETS = {
    "native-openmp": ["-O3", "-march=native", "-fopenmp"],
    "openmp": ["-O3", "-fopenmp"],
    "native": ["-O3", "-march=native"],
    "plain": ["-O3"],
}


def _skip_unless_usable(cc: str, flags: list[str], tmp: Path) -> None:
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not on PATH")
    if cc == "clang" and "-fopenmp" in flags:
        reason = _clang_openmp_reason(tmp)
        if reason:
            pytest.skip(reason)


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_header_compiles_clean(tmp_path, cc, flags):
    """The harness (which calls gc_gemm) builds with -O3 -Wall -Wextra -Werror everywhere."""
    _skip_unless_usable(cc, flags, tmp_path)
    jobs = []
    for real in ("float", "double"):
        cmd = [cc, *WARNINGS, *flags, f"-DGC_REAL={real}", f"-I{RUNTIME}", "-c", str(HARNESS)]
        cmd += ["-o", str(tmp_path / f"h_{real}.o")]
        jobs.append((cmd, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)))
    for cmd, job in jobs:
        _, stderr = job.communicate()
        assert job.returncode == 0, f"{' '.join(cmd)}:\n{stderr}"


def test_header_compiles_for_aarch64(tmp_path):
    """The portable path (128-bit vectors, no x86 intrinsics) also builds for another target."""
    _skip_unless_usable("clang", [], tmp_path)
    probe = subprocess.run(
        ["clang", "--target=aarch64-linux-gnu", "-x", "c", "-S", "-o", "-", "/dev/null"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("this clang has no AArch64 backend")
    for real in ("float", "double"):
        # freestanding: the header needs only the compiler's own stddef.h and stdint.h,
        # and no AArch64 C library is installed here
        cmd = ["clang", "--target=aarch64-linux-gnu", *WARNINGS, "-O3", f"-DGC_REAL={real}"]
        cmd += [
            "-ffreestanding",
            f"-I{RUNTIME}",
            "-S",
            str(HARNESS),
            "-o",
            str(tmp_path / f"h_{real}.s"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stderr}"
        assert "fmla" in (tmp_path / f"h_{real}.s").read_text()  # NEON fused multiply-add


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_header_compiles_clean_when_unused(tmp_path, cc):
    """A translation unit that includes the header but never calls gc_gemm stays -Werror clean."""
    flags = FLAG_SETS["native-openmp"]
    _skip_unless_usable(cc, flags, tmp_path)
    src = tmp_path / "unused.c"
    src.write_text(
        '#define GC_REAL float\n#include "gc_gemm.h"\n'
        "int unused_tu(void);\nint unused_tu(void) { return 0; }\n"
    )
    cmd = [cc, *WARNINGS, *flags, f"-I{RUNTIME}", "-c", str(src), "-o", str(tmp_path / "u.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stderr}"


def test_header_rejects_other_types(tmp_path):
    """GC_REAL other than float/double is a compile error, not silent garbage."""
    src = tmp_path / "bad.c"
    src.write_text('#define GC_REAL int\n#include "gc_gemm.h"\n')
    proc = subprocess.run(
        ["gcc", *WARNINGS, f"-I{RUNTIME}", "-c", str(src), "-o", str(tmp_path / "b.o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "GC_REAL must be float or double" in proc.stderr
