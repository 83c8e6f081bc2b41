"""Golden files: the generated C of small reference graphs, reviewed like code.

A change to the code generator that moves these files shows up as a diff here; regenerate
them with `pytest tests/test_golden.py --update-golden` in the same commit and read the diff.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

import graphc as gc
from graphc.codegen.c import render_model
from graphc.compiler import plan_model

GOLDEN = Path(__file__).parent / "golden"
#: sympy prints the expressions: another sympy release may print the same math differently
SYMPY_FILE = GOLDEN / "sympy_version.txt"


def _sympy_release() -> str:
    import sympy

    return ".".join(sympy.__version__.split(".")[:2])


def mlp() -> tuple[gc.Graph, gc.Optimizer]:
    g = gc.Graph("golden_mlp")
    x = g.input("x", (5,))
    y = g.input("y", (), dtype="int32")
    h = gc.dense(x, 7, activation="tanh", name="hidden")
    logits = gc.dense(h, 3, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    return g, gc.SGD(lr=0.1)


def binary() -> tuple[gc.Graph, gc.Optimizer]:
    g = gc.Graph("golden_binary")
    x = g.input("x", (4,))
    t = g.input("t", (1,))
    h = gc.dense(x, 6, activation="relu", name="hidden")
    p = gc.dense(h, 1, activation="sigmoid", name="out")
    g.output("p", p)
    g.minimize(gc.binary_cross_entropy(p, t))
    return g, gc.Adam(lr=0.01)


def convnet() -> tuple[gc.Graph, gc.Optimizer]:
    g = gc.Graph("golden_conv")
    x = g.input("x", (1, 6, 6))
    y = g.input("y", (), dtype="int32")
    h = gc.conv2d(x, 2, 3, padding="same", activation="relu", name="conv")
    h = gc.max_pool2d(h, 2, name="pool")
    logits = gc.dense(gc.flatten(h), 3, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    return g, gc.SGD(lr=0.05, momentum=0.9)


@pytest.mark.parametrize("build", [mlp, binary, convnet], ids=lambda f: f.__name__)
def test_generated_c_matches_golden(build, update_golden: bool) -> None:
    graph, optimizer = build()
    # planned as gc.compile plans the C target
    plan = plan_model(graph, 4, "float32", optimizer, lanes=True, fuse_steps=True)
    source = render_model(plan)[0]
    path = GOLDEN / f"{graph.name}.c"
    if update_golden:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(source)
        SYMPY_FILE.write_text(_sympy_release() + "\n")
        return
    recorded = SYMPY_FILE.read_text().strip()
    if recorded != _sympy_release():
        pytest.skip(
            f"golden files come from sympy {recorded}, this is sympy {_sympy_release()}; "
            "rerun with --update-golden and review the diff"
        )
    assert path.exists(), f"no golden file {path}; run pytest {__file__} --update-golden"
    expected = path.read_text()
    if source != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), source.splitlines(True), str(path), "generated"
            )
        )
        pytest.fail(f"generated C differs from {path.name} (rerun with --update-golden):\n{diff}")
