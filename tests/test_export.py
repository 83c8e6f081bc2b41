"""Embedded export: standalone C99 builds with gcc/clang/ARM, matching model.predict."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import graphc as gc

STRICT = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data / 16.0, data.target


@pytest.fixture(scope="module")
def trained():
    X, Y = _digits()
    g = gc.Graph("digits")
    x = g.input("x", (64,))
    y = g.input("y", (), dtype="int32")
    h = gc.dense(x, 32, activation="tanh", name="hidden")
    logits = gc.dense(h, 10, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    model = gc.compile(g, batch_size=32, optimizer=gc.SGD(lr=0.1), seed=0)
    model.fit(X[:1000], Y[:1000], epochs=5)
    return model, X[1000:1200], Y[1000:1200]


def _build(
    directory: str,
    cc: str,
    extra: list[str] | None = None,
    static: bool = False,
    name: str = "digits",
) -> str:
    """Compile an export's main.c, NAME.c and NAME_weights.c strictly; returns the program."""
    exe = os.path.join(directory, f"{name}-{os.path.basename(cc)}")
    sources = (os.path.join(directory, f) for f in ("main.c", f"{name}.c", f"{name}_weights.c"))
    cmd = [cc, *STRICT, *(extra or []), "-o", exe, *sources, "-lm"]
    if static:
        cmd.insert(1, "-static")
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


def _run(command: list[str], rows: np.ndarray, env: dict | None = None) -> np.ndarray:
    text = "\n".join(" ".join(f"{v:.9g}" for v in row) for row in rows)
    out = subprocess.run(command, input=text, capture_output=True, text=True, check=True, env=env)
    return np.array([[float(v) for v in line.split()] for line in out.stdout.strip().splitlines()])


def test_export_files_and_header(trained, tmp_path):
    model, _, _ = trained
    result = model.export(str(tmp_path))
    for name in (
        "digits.h",
        "digits.c",
        "digits_weights.c",
        "main.c",
        "Makefile",
        "CMakeLists.txt",
    ):
        assert (tmp_path / name).exists()
    header = (tmp_path / "digits.h").read_text()
    assert f"#define DIGITS_ARENA_BYTES {result.arena_bytes}" in header
    source = (tmp_path / "digits.c").read_text() + (tmp_path / "digits_weights.c").read_text()
    assert "malloc" not in source and "#pragma omp" not in source and "omp_" not in source
    includes = {line.split()[1] for line in source.splitlines() if line.startswith("#include")}
    assert includes <= {"<math.h>", "<stddef.h>", "<stdint.h>", "<string.h>", '"digits.h"'}
    assert "const float digits_hidden_W[2048]" in source
    # the arena holds the peak of live activations for one row, not their sum
    assert result.arena_bytes < (32 + 10 + 10) * 4 + 3 * 64


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_export_matches_predict(trained, tmp_path, cc):
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    model, X, _ = trained
    model.export(str(tmp_path))
    got = _run([_build(str(tmp_path), cc)], X)
    ref = model.predict(X)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_export_make_and_binary_input(trained, tmp_path):
    model, X, _ = trained
    model.export(str(tmp_path))
    subprocess.run(["make", "-s", "-C", str(tmp_path)], check=True, capture_output=True)
    X[:7].astype("<f4").tofile(tmp_path / "rows.bin")
    out = subprocess.run(
        [str(tmp_path / "digits"), "-b", str(tmp_path / "rows.bin")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    got = np.array([[float(v) for v in line.split()] for line in out.strip().splitlines()])
    np.testing.assert_allclose(got, model.predict(X[:7]), rtol=1e-5, atol=1e-6)


def test_export_sanitizers(trained, tmp_path):
    model, X, _ = trained
    model.export(str(tmp_path), training=True)
    exe = _build(
        str(tmp_path), "gcc", ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]
    )
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="halt_on_error=1")
    got = _run([exe], X[:20], env=env)
    np.testing.assert_allclose(got, model.predict(X[:20]), rtol=1e-5, atol=1e-6)


def test_on_device_training_matches_host(trained, tmp_path):
    """The exported train step does what model.train_step does, in the same fixed arena."""
    model, X, Y = trained
    model.export(str(tmp_path), training=True, batch_size=8)
    driver = tmp_path / "train_main.c"
    driver.write_text(
        '#include <stdio.h>\n#include "digits.h"\n'
        "static double arena[DIGITS_ARENA_BYTES / sizeof(double) + 1];\n"
        "int main(void) {\n"
        "  float x[8 * 64]; int32_t y[8]; float out[10];\n"
        '  for (int i = 0; i < 8 * 64; ++i) if (scanf("%f", &x[i]) != 1) return 1;\n'
        '  for (int i = 0; i < 8; ++i) if (scanf("%d", &y[i]) != 1) return 1;\n'
        "  digits_train_init(arena);\n"
        "  double loss = 0;\n"
        "  for (int s = 0; s < 3; ++s) loss = digits_train_step(x, y, 8, arena);\n"
        '  printf("%.9g\\n", loss);\n'
        "  digits_predict(x, out, arena);\n"
        '  for (int i = 0; i < 10; ++i) printf("%.9g ", out[i]);\n'
        '  printf("\\n");\n  return 0;\n}\n'
    )
    exe = str(tmp_path / "train")
    subprocess.run(
        [
            "gcc",
            *STRICT,
            "-o",
            exe,
            str(driver),
            str(tmp_path / "digits.c"),
            str(tmp_path / "digits_weights.c"),
            "-lm",
        ],
        check=True,
        capture_output=True,
    )
    text = " ".join(f"{v:.9g}" for v in X[:8].ravel()) + "\n" + " ".join(map(str, Y[:8]))
    lines = subprocess.run(
        [exe], input=text, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    host = gc.compile(model.graph, batch_size=8, optimizer=gc.SGD(lr=0.1), seed=0)
    host.set_params(model.params)
    loss = [host.train_step(X[:8].astype(np.float32), Y[:8]) for _ in range(3)][-1]
    assert float(lines[0]) == pytest.approx(loss, rel=1e-5)
    probs = np.array([float(v) for v in lines[1].split()])
    np.testing.assert_allclose(probs, host.predict(X[:1])[0], rtol=1e-4, atol=1e-6)


def test_cortex_m4_sizes(trained, tmp_path):
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc is not installed (apt-get install gcc-arm-none-eabi)")
    model, _, _ = trained
    result = model.export(str(tmp_path))
    from graphc.export import cortex_m4_sizes

    sizes = cortex_m4_sizes(str(tmp_path), "digits")
    assert sizes["text"] > 0
    assert sizes["bss"] == 0  # no global mutable state in the library
    assert "Cortex-M4" in result.report()


def test_arm_linux_under_qemu(trained, tmp_path):
    if shutil.which("arm-linux-gnueabihf-gcc") is None or shutil.which("qemu-arm") is None:
        pytest.skip(
            "arm-linux-gnueabihf-gcc or qemu-arm missing (apt-get install "
            "gcc-arm-linux-gnueabihf qemu-user)"
        )
    model, X, _ = trained
    model.export(str(tmp_path))
    exe = _build(str(tmp_path), "arm-linux-gnueabihf-gcc", static=True)
    got = _run(["qemu-arm", exe], X[:30])
    ref = model.predict(X[:30])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_cnn_export_matches_predict(tmp_path):
    """Convolution, pooling, dropout (identity at inference) and dense export to C99 too."""
    X, Y = _digits()
    images = X.reshape(-1, 1, 8, 8)
    g = gc.Graph("cnn")
    x = g.input("x", (1, 8, 8))
    y = g.input("y", (), dtype="int32")
    h = gc.conv2d(x, 4, 3, padding="same", activation="relu", name="conv1")
    h = gc.max_pool2d(h, 2, name="pool1")
    h = gc.conv2d(h, 6, 3, stride=1, padding="valid", activation="tanh", name="conv2")
    h = gc.dropout(gc.flatten(h), 0.2, name="drop")
    logits = gc.dense(h, 10, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    model = gc.compile(g, batch_size=32, optimizer=gc.Adam(0.01), seed=0)
    model.fit(images[:500], Y[:500], epochs=2, verbose=0)
    model.export(str(tmp_path))
    exe = _build(str(tmp_path), "gcc", name="cnn")
    got = _run([exe], X[1000:1040])
    ref = model.predict(images[1000:1040])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_training_export_with_dropout(tmp_path):
    """On-device training draws the same counter-based dropout masks as the host."""
    X, Y = _digits()
    g = gc.Graph("dropnet")
    x = g.input("x", (64,))
    y = g.input("y", (), dtype="int32")
    h = gc.dropout(gc.dense(x, 16, activation="relu", name="hidden"), 0.5, name="drop")
    logits = gc.dense(h, 10, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    model = gc.compile(g, batch_size=4, optimizer=gc.SGD(0.1), seed=0)
    model.seed = 0
    model.export(str(tmp_path), training=True, batch_size=4)
    driver = tmp_path / "drive.c"
    driver.write_text(
        '#include <stdio.h>\n#include "dropnet.h"\n'
        "static double arena[DROPNET_ARENA_BYTES / sizeof(double) + 1];\n"
        "int main(void) {\n  float x[4 * 64]; int32_t y[4];\n"
        '  for (int i = 0; i < 4 * 64; ++i) if (scanf("%f", &x[i]) != 1) return 1;\n'
        '  for (int i = 0; i < 4; ++i) if (scanf("%d", &y[i]) != 1) return 1;\n'
        "  dropnet_train_init(arena);\n  double loss = 0;\n"
        "  for (int s = 0; s < 3; ++s) loss = dropnet_train_step(x, y, 4, arena);\n"
        '  printf("%.9g\\n", loss);\n  return 0;\n}\n'
    )
    exe = str(tmp_path / "drive")
    subprocess.run(
        [
            "gcc",
            *STRICT,
            "-o",
            exe,
            str(driver),
            str(tmp_path / "dropnet.c"),
            str(tmp_path / "dropnet_weights.c"),
            "-lm",
        ],
        check=True,
        capture_output=True,
    )
    text = " ".join(f"{v:.9g}" for v in X[:4].ravel()) + "\n" + " ".join(map(str, Y[:4]))
    out = subprocess.run([exe], input=text, capture_output=True, text=True, check=True).stdout
    host = [model.train_step(X[:4].astype(np.float32), Y[:4]) for _ in range(3)][-1]
    assert float(out) == pytest.approx(host, rel=1e-5)


def test_recurrent_export_matches_predict(tmp_path):
    """Token ids (int32) through an embedding, a GRU and a dense layer, exported to C99."""
    rng = np.random.default_rng(0)
    g = gc.Graph("seq")
    ids = g.input("ids", (6,), dtype="int32")
    y = g.input("y", (), dtype="int32")
    h = gc.gru(gc.embedding(ids, 11, 5, name="emb"), 8, name="gru")
    logits = gc.dense(h, 3, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    model = gc.compile(g, batch_size=8, optimizer=gc.Adam(0.01), seed=0)
    tokens = rng.integers(0, 11, size=(64, 6)).astype(np.int32)
    model.fit(tokens, (tokens[:, 0] % 3).astype(np.int32), epochs=2, verbose=0)
    model.export(str(tmp_path))
    exe = _build(str(tmp_path), "gcc", name="seq")
    got = _run([exe], tokens[:20].astype(np.float64))
    ref = model.predict(tokens[:20])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_int8_export_accuracy_loss_is_small(trained, tmp_path):
    """Per-unit int8 weights, a calibrated int8 input per layer, int32 sums: accuracy kept."""
    model, X, Y = trained
    calibration = _digits()[0][:300]
    as_float = model.export(str(tmp_path / "f32"))
    result = model.export(str(tmp_path / "q8"), quantize="int8", calibration=calibration)
    assert result.quantized == ("hidden.W", "out.W")
    assert result.weight_bytes < 0.4 * as_float.weight_bytes
    source = (tmp_path / "q8" / "digits.c").read_text()
    assert (
        "int32_t gc_acc" in source
        and "const int8_t digits_hidden_W_q" in (tmp_path / "q8" / "digits_weights.c").read_text()
    )
    subprocess.run(
        ["gcc", *STRICT, "-c", str(tmp_path / "q8" / "digits.c"), "-o", str(tmp_path / "q8.o")],
        check=True,
        capture_output=True,
        text=True,
    )
    figures = result.evaluate(model, X, Y)
    assert figures["agreement"] >= 0.97
    assert figures["accuracy_loss"] <= 0.02
    assert "int8 layers" in result.report()
    with pytest.raises(gc.GraphError, match="calibration"):
        model.export(str(tmp_path / "bad"), quantize="int8")
