"""The graphc command: every subcommand on an example model, and its error cases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from graphc.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "examples", "c_api", "model.py") + ":graph"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_build_then_train_from_c(tmp_path, capsys):
    """The README tour: graphc build, then a C program trains through the library."""
    out_dir = tmp_path / "blobs"
    code, out, _ = run(capsys, "build", MODEL, "-o", str(out_dir), "--lr", "0.1")
    assert code == 0 and "libblobs.so" in out
    for name in ("libblobs.so", "blobs.h", "blobs.c", "manifest.json", "gc_runtime.h"):
        assert (out_dir / name).exists(), name
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert [p["name"] for p in manifest["params"]] == ["hidden.W", "hidden.b", "out.W", "out.b"]
    assert [p["index"] for p in manifest["params"]] == [0, 1, 2, 3]
    assert manifest["arena_bytes"] > 0 and manifest["batch_size"] == 32
    exe = tmp_path / "train"
    subprocess.run(
        [
            "cc",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
            str(out_dir),
            os.path.join(ROOT, "examples", "c_api", "train.c"),
            "-L",
            str(out_dir),
            "-lblobs",
            f"-Wl,-rpath,{out_dir}",
            "-lm",
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "training accuracy" in result.stdout


def test_explain_text_and_latex(capsys):
    code, out, _ = run(capsys, "explain", MODEL)
    assert code == 0
    assert "δ[hidden] = (δ[out] · out.Wᵀ) ⊙ (1 - hidden²)" in out
    code, out, _ = run(capsys, "explain", MODEL, "--latex")
    assert code == 0 and out.startswith("\\begin{align*}") and "\\delta^{[\\mathrm{hidden}]}" in out


def test_show_all_and_one_kernel(capsys):
    code, out, _ = run(capsys, "show", MODEL)
    assert code == 0 and "blobs_train_step" in out and "\x1b[" not in out  # plain when piped
    code, out, _ = run(capsys, "show", MODEL, "--kernel", "k_hidden")
    assert code == 0 and "static void k_hidden(" in out and "tanh" in out
    assert "blobs_train_step" not in out
    code, _, err = run(capsys, "show", MODEL, "--kernel", "nope")
    assert code == 2 and "no kernel 'nope'" in err and "k_hidden" in err


def test_graph_dot_and_svg(tmp_path, capsys):
    dot = tmp_path / "g.dot"
    code, _, _ = run(capsys, "graph", MODEL, "-o", str(dot))
    text = dot.read_text()
    assert code == 0 and text.startswith('digraph "blobs"')
    assert "fillcolor=orange" in text and "delta_hidden" in text
    svg = tmp_path / "g.svg"
    code, out, _ = run(capsys, "graph", MODEL, "-o", str(svg))
    assert code == 0
    if shutil.which("dot"):
        assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    else:
        assert (tmp_path / "g.dot").exists() and "Graphviz" in out
    code, _, err = run(capsys, "graph", MODEL, "-o", str(tmp_path / "g.pdf"))
    assert code == 2 and ".dot, .svg or .png" in err


def test_export_and_report(tmp_path, capsys):
    code, out, _ = run(capsys, "export", MODEL, "-o", str(tmp_path / "exp"))
    assert code == 0 and "arena" in out and "weights" in out
    assert (tmp_path / "exp" / "blobs.h").exists() and (tmp_path / "exp" / "Makefile").exists()


def test_bench(capsys):
    code, out, _ = run(capsys, "bench", MODEL, "--steps", "5", "--epochs", "1")
    assert code == 0 and "steps/s" in out and "samples/s" in out


@pytest.mark.parametrize(
    "spec, message",
    [
        ("examples/c_api/model.py", "must look like path/to/file.py:NAME"),
        ("no/such/file.py:graph", "no such file"),
        (os.path.join(ROOT, "examples", "c_api", "model.py") + ":nothing", "has no 'nothing'"),
        (os.path.join(ROOT, "examples", "c_api", "model.py") + ":gc", "not a gc.Graph"),
    ],
)
def test_model_errors_are_one_line(capsys, spec, message):
    code, out, err = run(capsys, "explain", spec)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_broken_user_file(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    code, _, err = run(capsys, "explain", f"{bad}:g")
    assert code == 2 and "importing" in err and "boom" in err


@pytest.mark.parametrize("command", ["build", "explain", "show", "graph", "export", "bench"])
def test_help_has_example(command):
    result = subprocess.run(
        [sys.executable, "-m", "graphc.cli", command, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0 and "example: graphc " + command in result.stdout


def test_graph_svg_for_notebooks():
    from graphc.cli import load_graph

    graph = load_graph(MODEL)
    svg = graph._repr_svg_()
    if shutil.which("dot") is None:
        assert svg is None
    else:
        assert "<svg" in svg and "delta_hidden" in svg
