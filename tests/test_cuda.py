"""The CUDA backend (graphc/codegen/cuda.py, templates/cuda, runtime/gc_cuda*.h).

Three levels, so that most of it runs on a machine without a GPU:

1. the generated CUDA of the example graphs compiles with nvcc (-Werror), when nvcc exists;
2. the same .cu files, compiled as C++ against runtime/gc_cuda_emu.h (target "cuda-emu"),
   run on the CPU and agree with the C backend: forward, gradients, several optimizer
   steps and whole epochs, float32, relative 1e-4;
3. on a GPU (marker ``cuda``), target "cuda" against the C backend the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import cffi
import numpy as np
import pytest
from helpers import classifier_graph, reductions_graph

import graphc as gc
from graphc.build import build_cuda, cuda_device_error, find_cxx, find_nvcc
from graphc.codegen import cuda
from graphc.codegen.c import RUNTIME_DIR, environment, template_variables
from graphc.compiler import plan_model
from graphc.errors import CompilerNotFoundError

HERE = Path(__file__).resolve().parent
RTOL = 1e-4


def _has_cxx() -> bool:
    try:
        find_cxx()
    except CompilerNotFoundError:
        return False
    return True


HAS_NVCC = shutil.which("nvcc") is not None or os.environ.get("NVCC") is not None
HAS_GPU = cuda_device_error() is None
needs_cxx = pytest.mark.skipif(not _has_cxx(), reason="the CUDA emulation needs a C++ compiler")
needs_nvcc = pytest.mark.skipif(not HAS_NVCC, reason="needs nvcc (the CUDA toolkit)")
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason=f"needs a CUDA GPU: {cuda_device_error()}")


# --- reference graphs: every kernel kind the CUDA backend covers -----------------------------
def mlp() -> gc.Graph:
    g = gc.Graph("cu_mlp")
    x = g.input("x", 6)
    y = g.input("y", 3)
    h = gc.dense(x, 9, activation="tanh", name="hidden")
    h = gc.dropout(h, 0.25)
    out = gc.dense(h, 3, activation="sigmoid", name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


def classifier() -> gc.Graph:
    return classifier_graph("cu_clf")


def reductions() -> gc.Graph:
    return reductions_graph("cu_reduce")


def convnet() -> gc.Graph:
    g = gc.Graph("cu_conv")
    x = g.input("x", (2, 7, 6))
    labels = g.input("labels", (), dtype="int32")
    h = gc.conv2d(x, 3, 3, padding="same", activation="relu", name="conv")
    h = gc.max_pool2d(h, 2, name="pool")
    h = gc.dropout(h, 0.25)
    h = gc.mean_pool2d(gc.conv2d(h, 4, (2, 2), name="conv2"), 1)
    logits = gc.dense(gc.flatten(h), 5, name="logits")
    g.output("logits", logits)
    g.minimize(gc.softmax_cross_entropy(logits, labels))
    return g


def strided() -> gc.Graph:
    """Strides, uneven padding and 1-D windows: the scattering backward kernels."""
    g = gc.Graph("cu_strided")
    x = g.input("x", (2, 11))
    t = g.input("t", 3)
    h = gc.conv1d(x, 4, 3, stride=2, padding=1, activation="tanh", name="c1")
    h = gc.mean_pool1d(h, 2, stride=1, name="p1")
    h = gc.conv2d(gc.reshape(h, (1, 4, 5)), 2, (2, 3), stride=(1, 2), padding=(1, 0), name="c2")
    h = gc.max_pool2d(h, (2, 1), stride=(1, 1), name="p2")
    out = gc.dense(gc.flatten(h), 3, activation="sigmoid", name="out")
    g.output("out", out)
    g.minimize(gc.binary_cross_entropy(out, t))
    return g


def embedded() -> gc.Graph:
    """Embedding lookups, their scatter-add and a concatenation."""
    g = gc.Graph("cu_embed")
    ids = g.input("ids", (4,), dtype="int32")
    x = g.input("x", (4, 3))
    y = g.input("y", (), dtype="int32")
    e = gc.embedding(ids, 6, 5, name="emb")
    h = gc.dense(gc.flatten(gc.concat([e, x], axis=-1)), 7, activation="relu", name="hidden")
    logits = gc.dense(h, 3, name="logits")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    return g


def recurrent() -> gc.Graph:
    """The recurrent time loops: an RNN (cell fused into the GEMM) into a bidirectional LSTM
    (GEMM, then a cell kernel), and their backward loops."""
    g = gc.Graph("cu_rec")
    x = g.input("x", (3, 5))
    y = g.input("y", 2)
    h = gc.rnn(x, 4, return_sequences=True, name="rnn")
    h = gc.lstm(h, 5, bidirectional=True, name="lstm")
    out = gc.dense(h, 2, name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


GRAPHS = {
    "mlp": (mlp, lambda: gc.Adam(lr=1e-2, clip_norm=1.0)),
    "classifier": (classifier, lambda: gc.SGD(lr=0.1, momentum=0.9, nesterov=True)),
    "reductions": (reductions, lambda: gc.RMSProp(lr=1e-2, clip_norm=0.5)),
    "convnet": (convnet, lambda: gc.Adam(lr=1e-2)),
    "strided": (strided, lambda: gc.SGD(lr=0.05, weight_decay=1e-3)),
    "embedded": (embedded, lambda: gc.AdaGrad(lr=0.1)),
    "recurrent": (recurrent, lambda: gc.Adam(lr=1e-2, clip_norm=1.0)),
    # plain SGD: the weights' steps are fused into their gradient products
    "mlp_sgd": (mlp, lambda: gc.SGD(lr=0.1)),
}


def data(model, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs in each input's valid domain: class indices in range, distributions, [0, 1]."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in model.plan.inputs:
        shape = (rows,) + t.shape
        if t.dtype == "int32":
            out[t.label] = rng.integers(0, model._classes[t.label], size=shape).astype(np.int32)
        elif t.label == "t":
            value = rng.uniform(0.05, 1.0, size=shape)
            out[t.label] = value / value.sum(axis=-1, keepdims=True)
        elif t.label == "y":
            out[t.label] = rng.uniform(size=shape)
        else:
            out[t.label] = rng.normal(size=shape)
    return out


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over max |a|: the error relative to the tensor's scale."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-6))


def assert_same_training(reference, model, rows: int = 10) -> None:
    """Forward, gradients, steps and epochs of ``model`` agree with ``reference`` (C)."""
    batch = reference.batch_size
    inputs = data(reference, rows)
    first = {k: v[:batch] for k, v in inputs.items()}
    for name, value in reference.params.items():
        assert np.array_equal(value, model.params[name]), f"initial {name}"
    ref_out, out = reference.predict(inputs), model.predict(inputs)
    for key in ref_out if isinstance(ref_out, dict) else [None]:
        a, b = (ref_out, out) if key is None else (ref_out[key], out[key])
        assert relative(a, b) < RTOL, f"predict {key}: {relative(a, b):.2e}"
    ref_grads, grads = reference.gradients(first), model.gradients(first)
    for name, value in ref_grads.items():
        assert relative(value, grads[name]) < RTOL, f"gradient of {name}"
    ref_eval, got = reference.evaluate(inputs), model.evaluate(inputs)
    assert got.keys() == ref_eval.keys()
    for key, value in ref_eval.items():
        assert abs(got[key] - value) <= RTOL * max(abs(value), 1.0), key
    for _ in range(3):
        ref_loss, loss = reference.train_step(first), model.train_step(first)
        assert abs(loss - ref_loss) <= RTOL * abs(ref_loss)
    ref_hist, hist = (
        reference.fit(inputs, epochs=2, verbose=0),
        model.fit(inputs, epochs=2, verbose=0),
    )
    for key, values in ref_hist.history.items():
        assert np.allclose(hist[key], values, rtol=RTOL, atol=0), key
    for name, value in reference.params.items():
        assert relative(value, model.params[name]) < RTOL, f"trained {name}"
    for name, states in reference.optimizer_state.items():
        for state, value in states.items():
            got_state = model.optimizer_state[name][state]
            assert relative(value, got_state) < RTOL, f"{name}.{state}"
    assert (model.step, model.epoch) == (reference.step, reference.epoch)


def _pair(name: str, target: str, batch_size: int = 4):
    build, optimizer = GRAPHS[name]
    models = [
        gc.compile(build(), target=t, batch_size=batch_size, optimizer=optimizer(), seed=3)
        for t in ("c", target)
    ]
    return models


# --- 1. nvcc ----------------------------------------------------------------------------------
@needs_nvcc
@pytest.mark.parametrize(
    ("graphs", "dtype"),
    [
        (("mlp", "strided", "mlp_sgd"), "float32"),
        (("convnet", "embedded"), "float64"),
        (("recurrent",), "float32"),
    ],
)
def test_generated_cuda_compiles_with_nvcc(graphs, dtype):
    """Every kernel template, in both dtypes, through nvcc with warnings as errors."""
    for name in graphs:
        build, optimizer = GRAPHS[name]
        plan = plan_model(build(), 8, dtype, optimizer(), fuse_steps=True)
        source, header, cdef = cuda.render_model(plan)
        library = build_cuda(plan.name, source, header, cdef, load=False)
        assert os.path.isfile(library.library_path)
        assert "-Werror" in library.flags
        assert any(flag.startswith("-arch=") for flag in library.flags)


@needs_nvcc
def test_recurrent_cells_never_read_through_the_read_only_cache(tmp_path):
    """A recurrent cell runs as the epilogue of its step's GEMM and reads back the C the
    GEMM has just stored.  On a GPU, a load through the non-coherent read-only cache
    (ld.global.nc) may return the value from before that store: gradients came out wrong and
    different on every call, on an H200, while the emulation agreed with C.  nvcc emitted such
    loads when the cell's pointers were restrict; the PTX of every cell must have none."""
    from test_cuda_recurrent import gru as gru_graph

    for build in (recurrent, gru_graph):
        plan = plan_model(build(), 4, "float32", gc.SGD())
        source, header, _ = cuda.render_model(plan)
        (tmp_path / f"{plan.name}.h").write_text(header)
        (tmp_path / f"{plan.name}.cu").write_text(source)
        ptx = tmp_path / f"{plan.name}.ptx"
        subprocess.run(
            [find_nvcc(), "-O3", "-std=c++17", "-arch=sm_90", "-ptx", "-I", RUNTIME_DIR, "-I",
             str(tmp_path), "-o", str(ptx), str(tmp_path / f"{plan.name}.cu")],
            check=True, capture_output=True,
        )  # fmt: skip
        entries = ptx.read_text().split(".entry ")[1:]
        gemms = [e for e in entries if e.startswith("_Z14gc_gemm_kernel")]
        cells = [e for e in gemms if "_cell" in e.split("(", 1)[0]]
        assert len(cells) >= 2, "the forward and backward cells' GEMM kernels"
        # every epilogue runs after the stores of C, so no GEMM kernel may use that cache
        for entry in gemms:
            assert "ld.global.nc" not in entry, entry.split("(", 1)[0]


def test_missing_nvcc_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("NVCC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(gc.CompilerNotFoundError, match="nvcc"):
        gc.compile(mlp(), target="cuda", optimizer=gc.SGD())


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
@needs_nvcc
def test_no_device_is_one_clear_error():
    with pytest.raises(gc.DeviceError, match="cuda-emu"):
        gc.compile(mlp(), target="cuda", optimizer=gc.SGD())


# --- contexts and templates -------------------------------------------------------------------
def test_every_cuda_template_gets_what_it_uses():
    env = environment()
    contexts = cuda.CudaKernelContexts(cuda.cuda_target("double"), "float64")
    seen = set()
    for build, optimizer in GRAPHS.values():
        plan = plan_model(build(), 4, "float64", optimizer())
        for program in plan.programs:
            for kernel in program.kernels:
                ctx = contexts.context(kernel)
                used = template_variables(env, ctx["template"])
                assert used <= set(ctx), f"{ctx['template']}: missing {sorted(used - set(ctx))}"
                seen.add(ctx["template"])
    kinds = {n for n in env.list_templates() if n.startswith("cuda/") and ".cu.j2" in n}
    model_templates = {f"cuda/{n}.cu.j2" for n in ("model", "program", "entry", "train")}
    assert seen == kinds - model_templates, "a CUDA kernel template no reference graph reaches"


def test_model_templates_get_every_variable_they_use(monkeypatch):
    """model.cu / api.h and the templates they include, against what render_model passes."""
    calls: dict[str, set[str]] = {}

    def recording_environment():
        # a private environment: the shared one is cached, and its templates must stay as
        # they are for the tests after this one
        env = getattr(environment, "__wrapped__", environment)()
        get_template = env.get_template

        def get(name, *args, **kwargs):
            template = get_template(name, *args, **kwargs)
            render = template.render

            def recorded(*a, **kw):
                calls.setdefault(name, set()).update(kw)
                return render(*a, **kw)

            template.render = recorded
            return template

        env.get_template = get
        return env

    monkeypatch.setattr(cuda, "environment", recording_environment)
    cuda.render_model(plan_model(classifier(), 8, "float32", gc.Adam()))
    env = environment()
    for name in ("cuda/model.cu.j2", "cuda/api.h.j2", "c/model.h.j2"):
        used = template_variables(env, name)
        assert used <= calls[name], f"{name}: missing {sorted(used - calls[name])}"
    model_keys = calls["cuda/model.cu.j2"] | {"p", "loop"}
    for included in ("cuda/program.cu.j2", "cuda/entry.cu.j2", "cuda/train.cu.j2"):
        used = template_variables(env, included)
        assert used <= model_keys, f"{included}: missing {sorted(used - model_keys)}"


def test_model_template_renders_deterministically():
    plan = plan_model(mlp(), 8, "float32", gc.Adam())
    first = cuda.render_model(plan)
    second = cuda.render_model(plan_model(mlp(), 8, "float32", gc.Adam()))
    assert first == second
    source = first[0]
    assert "<<<" not in source, "launches go through GC_LAUNCH (the emulation needs it)"
    assert "__global__" in source and "GC_LAUNCH(k_" in source
    # every kernel opens with its equation, as in C
    assert "/* hidden.xW = x · hidden.W; then hidden.z = hidden.b + hidden.xW" in source


def test_flat_index_inverts_the_loop_nest():
    index, total = cuda.flat_index([("i", "n"), ("j", 3), ("k", "n * 5")])
    assert total == "(long)n * 3 * (n * 5)"
    assert index == [
        ("i", "gc_i / (3 * (n * 5))"),
        ("j", "gc_i / (n * 5) % 3"),
        ("k", "gc_i % (n * 5)"),
    ]
    n = 2
    seen = set()
    for gc_i in range(n * 3 * n * 5):
        values = {var: eval(text.replace("/", "//"), {"gc_i": gc_i, "n": n}) for var, text in index}
        seen.add((values["i"], values["j"], values["k"]))
    assert seen == {(i, j, k) for i in range(n) for j in range(3) for k in range(n * 5)}


def test_a_kernel_kind_without_a_cuda_template_is_a_clear_graph_error():
    import dataclasses

    plan = plan_model(mlp(), 4, "float32", gc.SGD())
    kernel = dataclasses.replace(plan.programs[0].kernels[0], template="unknown_kind")
    contexts = cuda.CudaKernelContexts(cuda.cuda_target("float"), "float32")
    with pytest.raises(gc.GraphError, match=r"kernels of kind 'unknown_kind'.*target='c'"):
        contexts.context(kernel)


# --- 2. the emulation against the C backend ---------------------------------------------------
@needs_cxx
@pytest.mark.needs_cc
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_emulated_cuda_trains_like_c(name):
    reference, model = _pair(name, "cuda-emu")
    assert model._library.target == "cuda-emu" and model.source_path.endswith(".cu")
    assert ("gc_cuda_gemm_scaled(" in model.source) == (name == "mlp_sgd")
    assert_same_training(reference, model)


@needs_cxx
@pytest.mark.needs_cc
def test_emulated_dropout_masks_match_c_and_runs_are_bitwise_repeatable():
    reference, model = _pair("mlp", "cuda-emu")
    again = gc.compile(
        mlp(), target="cuda-emu", batch_size=4, optimizer=gc.Adam(clip_norm=1.0), seed=3
    )
    inputs = {k: v[:4] for k, v in data(reference, 4).items()}
    for m in (reference, model, again):
        m.set_params(reference.params)
        m._call("set_counters", m._handle, 7, 0)
    ref_grads = reference.gradients(inputs)
    grads, grads_again = model.gradients(inputs), again.gradients(inputs)
    for name, value in ref_grads.items():
        assert relative(value, grads[name]) < RTOL
        assert np.array_equal(grads[name], grads_again[name])


@needs_cxx
def test_emulated_model_has_the_whole_model_api(tmp_path):
    model = gc.compile(classifier(), target="cuda-emu", batch_size=4, optimizer=gc.Adam(lr=0.05))
    inputs = data(model, 9, seed=1)
    history = model.fit(inputs, epochs=3, validation_data=inputs, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history["loss"][-1] < history["loss"][0]
    probs = model.predict({"x": inputs["x"]})
    assert probs.shape == (9, 4) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # params round trip, checkpoints, freezing (which recompiles for the same target)
    params = model.params
    model.set_params({"hidden.b": np.full(7, 0.5)})
    assert np.all(model.params["hidden.b"] == 0.5)
    model.save(tmp_path / "model.ckpt")
    fresh = gc.compile(classifier(), target="cuda-emu", batch_size=4, optimizer=gc.Adam(lr=0.05))
    fresh.load(tmp_path / "model.ckpt")
    assert np.array_equal(fresh.params["hidden.W"], params["hidden.W"])
    assert fresh.step == model.step and fresh.optimizer_state.keys() == model.optimizer_state.keys()
    frozen = model.freeze("hidden")
    assert frozen._library.target == "cuda-emu"
    before = frozen.params["hidden.W"]
    frozen.fit(inputs, epochs=1, verbose=0)
    assert np.array_equal(frozen.params["hidden.W"], before)
    assert "δ[hidden]" in model.explain() or "hidden" in model.explain()
    assert "__global__" in model.source and "cu_clf_read_tensor" in model.header


@needs_cxx
@pytest.mark.needs_cc
def test_inference_only_and_training_only_models():
    """Entry points exist exactly for the programs a graph has, as in C."""
    g = gc.Graph("cu_infer")
    x = g.input("x", 4)
    g.output("y", gc.dense(x, 3, activation="tanh", name="d"))
    reference, model = (gc.compile(g, target=t, batch_size=4) for t in ("c", "cuda-emu"))
    inputs = np.random.default_rng(0).normal(size=(9, 4))
    assert relative(reference.predict(inputs), model.predict(inputs)) < RTOL
    assert "cu_infer_train_step" not in model.header
    g = gc.Graph("cu_train_only")
    x, y = g.input("x", 4), g.input("y", (), dtype="int32")
    g.minimize(gc.softmax_cross_entropy(gc.dense(x, 3, name="d"), y))
    model = gc.compile(g, target="cuda-emu", batch_size=4, optimizer=gc.SGD(lr=0.5))
    labels = (inputs[:, 0] > 0).astype(np.int32)
    history = model.fit(inputs, labels, epochs=5, verbose=0)
    assert history["loss"][-1] < history["loss"][0]
    assert "cu_train_only_predict" not in model.header


@needs_cxx
def test_cli_shows_one_cuda_kernel(capsys):
    from graphc.cli import main

    model = str(HERE.parent / "examples" / "c_api" / "model.py") + ":graph"
    assert main(["show", model, "--target", "cuda-emu", "--kernel", "k_hidden"]) == 0
    out = capsys.readouterr().out
    assert "static cudaError_t k_hidden(cudaStream_t gc_queue" in out
    assert "__device__ void operator()" in out and "_train_step" not in out


@needs_cxx
def test_fit_from_host_memory_matches_the_resident_data_set():
    """When the data set does not fit on the device, epochs gather batches on the host."""
    resident = gc.compile(mlp(), target="cuda-emu", batch_size=4, optimizer=gc.SGD(lr=0.1))
    host = gc.compile(mlp(), target="cuda-emu", batch_size=4, optimizer=gc.SGD(lr=0.1))
    calls = []
    real_call = host._call

    def no_room(name, *args):
        calls.append(name)
        return 2 if name == "data_upload" else real_call(name, *args)

    host._call = no_room
    inputs = data(resident, 11)
    a = resident.fit(inputs, epochs=2, verbose=0)
    b = host.fit(inputs, epochs=2, verbose=0)
    assert "train_epoch" in calls and "data_epoch" not in calls
    assert a["loss"] == b["loss"]
    assert all(np.array_equal(v, host.params[k]) for k, v in resident.params.items())


@needs_cxx
def test_a_failing_cuda_call_raises_with_its_message():
    model = gc.compile(mlp(), target="cuda-emu", batch_size=4, optimizer=gc.SGD())
    perm = np.empty(3, dtype=np.int64)
    hits = model._ffi.new("double *")
    with pytest.raises(gc.DeviceError, match="data_epoch: invalid argument"):
        model._call("data_epoch", model._handle, 3, model._ptr(perm, "int64_t"), 0, 1, hits)


# --- the GEMM kernel, every tile shape, under the emulation -----------------------------------
def _harness(tmp_path_factory, real: str, tile: int):
    cxx = find_cxx()
    out = tmp_path_factory.mktemp("cuda_gemm") / f"harness_{real}_{tile}.so"
    command = [cxx, "-x", "c++", "-std=c++17", "-O2", "-fPIC", "-shared", "-fopenmp"]
    command += ["-DGC_CUDA_EMU", f"-DGC_REAL={real}", f"-DGC_GEMM_TILE={tile}"]
    command += ["-Wall", "-Wextra", "-Werror", "-I", RUNTIME_DIR, "-o", str(out)]
    command += [str(HERE / "cuda_gemm_harness.cu")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ffi = cffi.FFI()
    ffi.cdef(
        "int h_real_size(void); int h_gemm(int, int, int, int, int, const void *, int, "
        "const void *, int, int, void *, int, int *, void *); int h_gemm_scaled(int, int, "
        "int, int, int, double, const void *, int, const void *, int, void *, int);"
    )
    return ffi, ffi.dlopen(str(out))


@needs_cxx
@pytest.mark.parametrize("tile", [0, 1, 2])
@pytest.mark.parametrize("real", ["float", "double"])
def test_cuda_gemm_every_tile_shape(tmp_path_factory, real, tile):
    ffi, lib = _harness(tmp_path_factory, real, tile)
    dtype = np.float32 if real == "float" else np.float64
    assert lib.h_real_size() == np.dtype(dtype).itemsize
    rng = np.random.default_rng(tile)
    tol = 1e-5 if real == "float" else 1e-12
    for m, n, k in [(1, 1, 1), (37, 45, 29), (130, 9, 3), (3, 131, 17), (5, 6, 0)]:
        for trans_a in (0, 1):
            for trans_b in (0, 1):
                accumulate = (m + trans_a + trans_b) % 2
                a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
                b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
                ldc = n + 3  # a C wider than N: only its first N columns are touched
                c = rng.normal(size=(m, ldc)).astype(dtype)
                want = c.copy()
                op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
                want[:, :n] = op_a.astype(np.float64) @ op_b + (c[:, :n] if accumulate else 0)
                counts = np.zeros((m, n), dtype=np.int32)
                snapshot = np.zeros((m, n), dtype=dtype)

                def ptr(x, kind="void *"):
                    return ffi.cast(kind, x.ctypes.data)

                status = lib.h_gemm(
                    trans_a, trans_b, m, n, k, ptr(a), a.shape[1], ptr(b), b.shape[1],
                    accumulate, ptr(c), ldc, ptr(counts, "int *"), ptr(snapshot),
                )  # fmt: skip
                assert status == 0
                assert np.allclose(c, want, rtol=tol, atol=tol * max(k, 1)), (
                    m,
                    n,
                    k,
                    trans_a,
                    trans_b,
                )
                assert np.all(counts == 1), "each element's epilogue runs exactly once"
                assert np.array_equal(snapshot, c[:, :n]), "the epilogue sees the finished value"


@needs_cxx
@pytest.mark.parametrize("real", ["float", "double"])
def test_cuda_gemm_scaled_adds_alpha_times_the_product(tmp_path_factory, real):
    """gc_cuda_gemm_scaled (a fused SGD step): C += alpha * op(A) op(B), for each layout."""
    ffi, lib = _harness(tmp_path_factory, real, 2)
    dtype = np.float32 if real == "float" else np.float64
    rng = np.random.default_rng(5)
    tol = 1e-5 if real == "float" else 1e-12
    for m, n, k in [(1, 1, 1), (37, 45, 29), (5, 6, 0)]:
        for trans_a in (0, 1):
            for trans_b in (0, 1):
                a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
                b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
                c = rng.normal(size=(m, n + 2)).astype(dtype)
                want = c.copy()
                op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
                want[:, :n] += -0.25 * (op_a.astype(np.float64) @ op_b)
                status = lib.h_gemm_scaled(
                    trans_a, trans_b, m, n, k, -0.25, ffi.cast("void *", a.ctypes.data),
                    a.shape[1], ffi.cast("void *", b.ctypes.data), b.shape[1],
                    ffi.cast("void *", c.ctypes.data), n + 2,
                )  # fmt: skip
                assert status == 0
                assert np.allclose(c, want, rtol=tol, atol=tol * max(k, 1)), (m, n, k)


# --- 3. on a GPU ------------------------------------------------------------------------------
@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_cuda_trains_like_c(name):
    reference, model = _pair(name, "cuda")
    assert model._library.target == "cuda"
    assert_same_training(reference, model)


@pytest.mark.cuda
@needs_gpu
def test_cuda_waits_for_each_kernel_when_asked(monkeypatch):
    """GRAPHC_CUDA_SYNC=1: every launch is waited for, so a fault names its kernel."""
    monkeypatch.setenv("GRAPHC_CUDA_SYNC", "1")
    model = gc.compile(mlp(), target="cuda", batch_size=4, optimizer=gc.SGD())
    inputs = {k: v[:4] for k, v in data(model, 4).items()}
    assert np.isfinite(model.train_step(inputs))
