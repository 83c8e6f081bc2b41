"""Peak memory of a W1 training run, stage by stage, each stage in a fresh subprocess.

Every stage starts a new Python, does a little more than the one before and prints its
peak resident set (VmHWM from /proc/self/status):

  numpy     Python + NumPy + W1's data (8192 x 784 float32 inputs, labels): the baseline
  import    + ``import graphc`` (sympy, jinja2, cffi)
  compile   + building and compiling W1 (the model's arena is allocated and zeroed here)
  train     + 2 epochs of ``fit`` (2 threads)

and two stages without graphc, which show how much of the rest is the compiler's:

  ctypes    the baseline + ``import ctypes``
  library   + the compiled W1 library (built beforehand) loaded with ctypes (the standard
            library's loader: no C parser at run time), its initial weights read from a
            file straight into its tensors, and trained for 2 epochs through its C API
            (``bench_mlp_train_epoch``), as a program that ships only the library would;
            the first epoch on one thread, the second on two, and the resident set after
            each step is printed too, which splits the stage's memory by what it is for.
            Its baseline is taken in the same process, after the harness's own first uses
            of ctypes and NumPy, so the peak above it is what the library costs: that is
            the figure held against the budget

The budget the issue sets is 1.2 x (parameters + optimizer state + one batch of activations
and δ's) above the baseline; the table prints that figure and the model's arena beside.

Usage: python bench/memory.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from common import ROOT

STAGES = ("numpy", "import", "compile", "train")
LIBRARY_STAGES = ("ctypes", "library")

SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
rng = np.random.default_rng(0)
X = rng.standard_normal((8192, 784), dtype=np.float32)
y = rng.integers(0, 10, 8192).astype(np.int32)
stage = {stage}
if stage >= 1:
    import graphc as gc
if stage >= 2:
    sys.path.insert(0, {bench!r})
    from memory import compile_w1
    m = compile_w1()
    print("arena", m.plan.memory.arena_bytes)
if stage >= 3:
    m.fit(X, y, epochs=2, verbose=0)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print("hwm", int(line.split()[1]) * 1024)
"""


LIBRARY_SCRIPT = """
import numpy as np
rng = np.random.default_rng(0)
X = rng.standard_normal((8192, 784), dtype=np.float32)
y = rng.integers(0, 10, 8192).astype(np.int32)
import ctypes
# the harness's own first uses (a ctypes buffer, an unbuffered read into it) before the
# baseline: they are the loader's cost, not training's
weights = open({weights!r}, "rb", buffering=0)
weights.readinto(ctypes.create_string_buffer(16))
weights.seek(0)
def mark(step):  # the resident set now: the library stage's breakdown
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            print("rss", int(line.split()[1]) * 1024, step)
mark("baseline")
if {load}:
    lib = ctypes.CDLL({path!r})
    mark("library and libgomp loaded")
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.bench_mlp_create.restype = p
    lib.bench_mlp_tensor.restype = ctypes.POINTER(ctypes.c_float)
    lib.bench_mlp_tensor.argtypes = [p, ctypes.c_int]
    lib.bench_mlp_set_threads.argtypes = [p, ctypes.c_int]
    lib.bench_mlp_set_lr.argtypes = [p, ctypes.c_double]
    lib.bench_mlp_train_epoch.restype = ctypes.c_double
    lib.bench_mlp_train_epoch.argtypes = [p, p, p, i64, p, ctypes.c_uint64, ctypes.c_int, p]
    m = lib.bench_mlp_create()
    mark("model created (arena allocated)")
    for index, (rows, cols) in enumerate([(784, 512), (512, 256), (256, 10)]):
        # straight from the file into the tensor, as a deployed program loads its weights
        address = ctypes.addressof(lib.bench_mlp_tensor(m, 2 * index).contents)
        weights.readinto((ctypes.c_char * (4 * rows * cols)).from_address(address))
    mark("weights read")
    lib.bench_mlp_set_lr(m, 0.01)
    perm = np.empty(8192, dtype=np.int64)
    hits = ctypes.c_double()
    for epoch in range(2):  # the first epoch on one thread, the second on two
        lib.bench_mlp_set_threads(m, 1 + epoch)
        loss = lib.bench_mlp_train_epoch(m, X.ctypes.data, y.ctypes.data, 8192,
            perm.ctypes.data, epoch, 1, ctypes.byref(hits))
        mark(f"epoch {{epoch + 1}} trained on {{epoch + 1}} thread(s)")
    assert loss == loss
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print("hwm", int(line.split()[1]) * 1024)
"""


def w1_budget_bytes() -> int:
    """1.2 x (parameters + SGD state (none) + one batch of activations and δ's), float32."""
    sizes, batch = (784, 512, 256, 10), 128
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    # activations: each layer's output and the softmax; δ's: one per layer output
    activations = batch * (sum(sizes[1:]) + sizes[-1])
    deltas = batch * sum(sizes[1:])
    return int(1.2 * 4 * (params + activations + deltas))


def measure() -> dict[str, int]:
    """Peak RSS in bytes of each stage, and the arena's size."""
    result: dict[str, int] = {}
    outputs: list[subprocess.CompletedProcess] = []
    for index, stage in enumerate(STAGES):
        script = SCRIPT.format(root=str(ROOT), bench=str(ROOT / "bench"), stage=index)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"memory stage {stage} failed:\n{out.stderr}")
        for line in out.stdout.splitlines():
            key, value = line.split()
            result[stage if key == "hwm" else key] = int(value)
    result["budget"] = w1_budget_bytes()
    library = compile_w1().library_path
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "w1_weights.bin")
        glorot_weights().tofile(weights)
        for index in range(len(LIBRARY_STAGES)):
            script = LIBRARY_SCRIPT.format(load=bool(index), path=library, weights=weights)
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
            outputs.append(out)
    for index, (stage, out) in enumerate(zip(LIBRARY_STAGES, outputs)):
        if out.returncode != 0:
            raise RuntimeError(f"memory stage {stage} failed:\n{out.stderr}")
        lines = out.stdout.splitlines()
        result[stage] = int(lines[-1].split()[1])
        if index:
            result["steps"] = [
                (step, int(rss)) for _, rss, step in (ln.split(" ", 2) for ln in lines[:-1])
            ]
    return result


def glorot_weights():
    """W1's three weight matrices, Glorot-uniform, float32, one after the other."""
    import numpy as np

    rng = np.random.default_rng(0)
    parts = []
    for rows, cols in zip((784, 512, 256), (512, 256, 10)):
        limit = np.sqrt(6.0 / (rows + cols))
        parts.append(rng.uniform(-limit, limit, rows * cols).astype(np.float32))
    return np.concatenate(parts)


def compile_w1():
    """W1 compiled for 2 threads (from graphc's cache when it holds the library)."""
    from common import gc

    g = gc.Graph("bench_mlp")
    h = g.input("x", (784,))
    t = g.input("y", (), dtype="int32")
    for k, units in enumerate((512, 256)):
        h = gc.dense(h, units, activation="relu", name=f"hidden{k + 1}")
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, 10, name="out"), t))
    return gc.compile(g, batch_size=128, optimizer=gc.SGD(lr=0.01), num_threads=2)


def print_table(m: dict[str, int]) -> None:
    """Peak RSS per stage, each above the NumPy baseline, with the budget."""
    mib = 1024 * 1024
    base = m["numpy"]
    print(f"{'stage':10} {'peak RSS MiB':>13} {'above baseline MiB':>19}")
    for stage in STAGES + LIBRARY_STAGES:
        print(f"{stage:10} {m[stage] / mib:13.1f} {(m[stage] - base) / mib:19.1f}")
    if "steps" in m:
        print("the library stage, step by step (resident set, VmRSS, after each step):")
        (_, previous), *steps = m["steps"]
        base = previous
        for step, rss in steps:
            print(f"  {step:40} {(rss - previous) / mib:+6.2f} MiB")
            previous = rss
        print(
            f"  {'peak above its own baseline':40} {(m['library'] - base) / mib:6.2f} MiB "
            f"(budget {m['budget'] / mib:.2f} MiB: "
            f"{'met' if m['library'] - base <= m['budget'] else 'NOT met'})"
        )
    print(
        f"budget 1.2 x (params + state + activations + δ's) = {m['budget'] / mib:.1f} MiB; "
        f"the model's arena = {m['arena'] / mib:.1f} MiB; training itself added "
        f"{(m['train'] - m['compile']) / mib:.1f} MiB"
    )


if __name__ == "__main__":
    print_table(measure())
