"""Code generation (graphc/codegen/): readable, deterministic C whose templates get all they use.

The reference graphs below are compiled once each (module fixtures); GRAPHC_WERROR=1 (set in
conftest) makes every kernel of them compile with -Wall -Wextra -Werror.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import classifier_graph, reductions_graph

import graphc as gc
from graphc.codegen.c import (
    TEMPLATE_DIR,
    KernelContexts,
    Target,
    barrier_free,
    environment,
    render_kernel,
    render_model,
    template_variables,
)
from graphc.compiler import plan_model
from graphc.kernels import GemmKernel, LossKernel, SoftmaxKernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp() -> gc.Graph:
    g = gc.Graph("ref_mlp")
    x = g.input("x", 3)
    y = g.input("y", 7)
    h = gc.dense(x, 5, activation="tanh", name="hidden")
    out = gc.dense(h, 7, activation="sigmoid", name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


def classifier() -> gc.Graph:
    return classifier_graph("ref_clf")


def reductions() -> gc.Graph:
    return reductions_graph("ref_reduce")


REFERENCES = {
    "mlp": (mlp, gc.SGD(lr=0.1, momentum=0.9)),
    "classifier": (classifier, gc.Adam(lr=1e-3)),
    "reductions": (reductions, gc.RMSProp(lr=1e-2, clip_norm=1.0)),
}


@pytest.fixture(scope="module", params=sorted(REFERENCES))
def reference(request):
    build, optimizer = REFERENCES[request.param]
    plan = plan_model(build(), 8, "float32", optimizer)
    return request.param, plan


@pytest.mark.needs_cc
@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reference_graphs_compile_warning_free(name, dtype):
    build, optimizer = REFERENCES[name]
    model = gc.compile(build(), batch_size=8, dtype=dtype, optimizer=optimizer)
    assert "-Werror" in model._library.flags


def test_every_kernel_opens_with_its_equation(reference):
    _, plan = reference
    source, _, _ = render_model(plan)
    for program in plan.programs:
        for kernel in program.kernels:
            comment = kernel.comment.replace("*/", "* /")
            assert "=" in comment or "<-" in comment, comment
            # the comment comes right before the kernel's definition (and its epilogue)
            body = source.index(f"static void {kernel.name}(")
            head = source.rfind(f"/* {comment} */", 0, body)
            assert head >= 0, f"no equation comment before {kernel.name}"
            between = source[head:body]
            assert "static void" not in between.replace(f"static void {kernel.name}_", "")


def test_generated_comments_are_ascii_where_c_needs_it(reference):
    """Non-ASCII is allowed in comments only; code lines are plain ASCII."""
    _, plan = reference
    source, header, _ = render_model(plan)
    for line in (source + header).splitlines():
        code = re.sub(r"/\*.*?\*/", "", line)
        if code.strip().startswith("*"):
            continue  # inside a multi-line comment
        assert code.isascii(), line


def test_names_come_from_the_graph():
    plan = plan_model(mlp(), 8, "float32", gc.SGD(0.1))
    source, header, _ = render_model(plan)
    for name in ("hidden_W", "hidden_b", "out_W", "delta_hidden", "delta_out", "grad_hidden_W"):
        assert re.search(rf"\b{name}\b", source), name
    assert "ref_mlp_train_step" in header and "ref_mlp_predict" in header
    assert "/* hidden.xW = x · hidden.W; then hidden.z = hidden.b + hidden.xW;" in source


@pytest.mark.needs_cc
def test_names_that_clash_with_c_or_template_locals_are_renamed():
    g = gc.Graph("clash")
    x = g.input("x", 3)
    y = g.input("y", 5)
    # 'sum', 'double', 't0', 'top' would clash with C, the templates' locals and temporaries
    p_sum = g.param("sum", (5,))
    z = gc.tanh(gc.matmul(x, g.param("double", (3, 5))), name="t0") + g.param("top", (5,))
    s = gc.reshape(gc.sum(z), (1,), name="total") * p_sum
    g.output("out", s)
    g.minimize(gc.mse(s, y))
    plan = plan_model(g, 4, "float32", gc.SGD(0.1))
    names = {t.name for pp in plan.params for t in (pp.param, pp.grad) if t is not None}
    assert {"v_double", "v_top", "v_sum"} <= names
    model = gc.compile(g, batch_size=4)  # compiles with -Werror: nothing shadowed
    assert model.predict(np.ones((2, 3))).shape == (2, 5)


def test_output_is_deterministic():
    first = render_model(plan_model(classifier(), 8, "float32", gc.Adam()))
    second = render_model(plan_model(classifier(), 8, "float32", gc.Adam()))
    assert first == second


def test_output_does_not_depend_on_hash_seeds():
    script = (
        "import hashlib, sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import graphc as gc\n"
        "from graphc.compiler import plan_model\n"
        "from graphc.codegen.c import render_model\n"
        "from test_codegen import reductions\n"
        "src = render_model(plan_model(reductions(), 8, 'float64', gc.Adam()))\n"
        "print(hashlib.sha256(''.join(src).encode()).hexdigest())\n"
    )
    digests = set()
    for seed in ("1", "2"):
        # the repository first, then whatever the caller's path holds (dependencies may
        # live there rather than in site-packages)
        path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=path)
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    local = render_model(plan_model(reductions(), 8, "float64", gc.Adam()))
    digests.add(hashlib.sha256("".join(local).encode()).hexdigest())
    assert len(digests) == 1


def test_kernel_templates_get_every_variable_they_use(reference):
    _, plan = reference
    env = environment()
    contexts = KernelContexts(Target(real="float"), "float32")
    for program in plan.programs:
        for kernel in program.kernels:
            ctx = contexts.context(kernel)
            used = template_variables(env, ctx["template"])
            assert used <= set(ctx), f"{ctx['template']}: missing {sorted(used - set(ctx))}"


def _convnet() -> gc.Graph:
    g = gc.Graph("ref_conv")
    x = g.input("x", (2, 7, 6))
    labels = g.input("labels", (), dtype="int32")
    h = gc.conv2d(x, 3, 3, padding="same", activation="relu", name="conv")
    h = gc.max_pool2d(h, 2, name="pool")
    h = gc.dropout(h, 0.25)
    # 16 output channels: the filter gradient's lane sweep (conv's 3 take the row sweep)
    h = gc.mean_pool2d(gc.conv2d(h, 16, (2, 2), name="conv2"), 1)
    logits = gc.dense(gc.flatten(h), 5, name="logits")
    g.output("logits", logits)
    g.minimize(gc.softmax_cross_entropy(logits, labels))
    return g


def test_wide_convolutions_take_the_lane_layouts_only_where_asked():
    """The C target sums 16+ channels in vector lanes (channels-last copies of the weights
    and δ); CUDA and the embedded export plan the plain layout, with no such copies."""
    for lanes in (False, True):
        plan = plan_model(_convnet(), 4, "float32", gc.Adam(), lanes=lanes)
        kernels = [k for p in plan.programs for k in p.kernels if k.template.startswith("conv")]
        copies = {k.name for k in kernels if getattr(k, "lanes", None) is not None}
        # conv2 (16 channels): its forward pass and its filter gradient
        assert copies == ({"k_conv2_conv", "k_grad_conv2_W"} if lanes else set())


def test_plain_sgd_steps_fold_into_weight_gradient_products():
    """With ``fuse_steps`` (which ``compile`` sets) and plain SGD, each dense weight's step is its
    gradient product scaled by −lr and added into the weight, and its update kernel is
    gone; biases keep theirs.  Momentum, clipping or no ``fuse_steps`` keep every update."""

    def updates(optimizer, fuse):
        plan = plan_model(mlp(), 8, "float32", optimizer, fuse_steps=fuse)
        train = next(p for p in plan.programs if p.name == "train")
        fused = {k.c.label for k in train.kernels if isinstance(k, GemmKernel) and k.scale}
        kernels = {k.name for k in train.kernels if k.name.startswith("update_")}
        return fused, kernels

    fused, kernels = updates(gc.SGD(0.1), True)
    weights = {label for label in fused if label.endswith(".W")}
    assert fused and fused == weights
    plain_fused, plain_kernels = updates(gc.SGD(0.1), False)
    assert not plain_fused and kernels == plain_kernels  # the same names, other kernels
    for optimizer in (gc.SGD(0.1, momentum=0.9), gc.SGD(0.1, clip_norm=1.0), gc.Adam()):
        assert updates(optimizer, True) == (set(), plain_kernels)


def test_softmax_cross_entropy_reads_the_softmax_kernels_log_sum_exp():
    """Where a program computes the softmax of the loss's logits, that kernel also stores
    each row's log-sum-exp and the loss reads it; inference keeps the plain softmax."""
    plan = plan_model(classifier(), 8, "float32", gc.SGD(0.1))
    for program in plan.programs:
        softmaxes = [k for k in program.kernels if isinstance(k, SoftmaxKernel)]
        losses = [k for k in program.kernels if isinstance(k, LossKernel)]
        assert len(softmaxes) == 1
        if program.name == "infer":
            assert softmaxes[0].lse is None and not losses
            continue
        assert softmaxes[0].lse is not None and losses[0].lse == softmaxes[0].lse
        assert program.kernels.index(softmaxes[0]) < program.kernels.index(losses[0])
    env = environment()
    contexts = KernelContexts(Target(real="float"), "float32")
    loss_text = render_kernel(env, contexts.context(losses[0]))
    assert "gc_expf" not in loss_text and "logits_lse[r]" in loss_text


def test_every_kernel_template_is_checked_against_a_context():
    """All kernel templates in templates/c, reached from the reference graphs and a convnet."""
    env = environment()
    contexts = KernelContexts(Target(real="double"), "float64")
    seen: dict[str, set[str]] = {}
    graphs = [build() for build, _ in REFERENCES.values()] + [_convnet()]
    for graph in graphs:
        # lanes: the C target's layouts of wide convolutions (their template variants)
        plan = plan_model(graph, 4, "float64", gc.Adam(clip_norm=1.0), lanes=True)
        for program in plan.programs:
            for kernel in program.kernels:
                ctx = contexts.context(kernel)
                used = template_variables(env, ctx["template"])
                assert used <= set(ctx), f"{ctx['template']}: missing {sorted(used - set(ctx))}"
                seen.setdefault(ctx["template"], set()).add(kernel.name)
    core = {f"c/{k}.c.j2" for k in ("elementwise", "gemm", "reduce", "softmax", "loss")}
    core |= {"c/conv_lanes.c.j2", "c/conv_backward_filter_lanes.c.j2"}
    assert core <= set(seen)


def test_model_templates_get_every_variable_they_use(monkeypatch):
    """model.c / model.h / api.h and the templates they include, against what render_model passes."""
    import graphc.codegen.c as c

    calls: dict[str, set[str]] = {}
    real_environment = c.environment

    def recording_environment():
        # a private environment: environment() is cached, and patching the shared one would
        # leak the recording wrappers into every later test
        env = real_environment.__wrapped__()
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

    monkeypatch.setattr(c, "environment", recording_environment)
    render_model(plan_model(mlp(), 8, "float32", gc.Adam()))
    env = real_environment()
    for name in ("c/model.c.j2", "c/model.h.j2", "c/api.h.j2"):
        assert name in calls
        used = template_variables(env, name)
        assert used <= calls[name], f"{name}: missing {sorted(used - calls[name])}"
    # included templates see the includer's context plus its loop variable
    model_keys = calls["c/model.c.j2"] | {"p", "loop"}
    for included in ("c/program.c.j2", "c/entry.c.j2"):
        used = template_variables(env, included)
        assert used <= model_keys, f"{included}: missing {sorted(used - model_keys)}"


def test_templates_stay_short():
    """STYLE: one short template per kernel kind (aim under ~50 lines)."""
    lengths = {}
    for name in os.listdir(os.path.join(TEMPLATE_DIR, "c")):
        with open(os.path.join(TEMPLATE_DIR, "c", name)) as f:
            lengths[name] = len(f.read().splitlines())
    for name in ("elementwise.c.j2", "gemm.c.j2", "reduce.c.j2", "softmax.c.j2", "loss.c.j2"):
        assert lengths[name] <= 60, (name, lengths[name])


def test_only_independent_elementwise_loops_skip_their_barrier():
    """The optimizer updates touch nothing the kernels after them touch: they end nowait.
    Every other elementwise loop of this graph feeds the next kernel and keeps its barrier."""
    plan = plan_model(reductions_graph("nowait"), 8, "float32", gc.Adam())
    free = barrier_free(plan)
    train = next(p for p in plan.programs if p.name == "train")
    loops = [k.name for k in train.kernels if k.template == "elementwise"]
    updates = [name for name in loops if name.startswith("update_")]
    assert len(updates) == 2 and set(updates) <= free
    assert len(loops) > len(updates)
    assert not free & (set(loops) - set(updates))
    source = render_model(plan)[0]
    assert source.count("#pragma omp for schedule(static) nowait") == len(updates)


@pytest.mark.parametrize("build", [classifier_graph, reductions_graph])
def test_generated_c_has_no_blank_line_inside_a_block(build):
    """Generated code is read by people: no empty line opens or closes a block."""
    plan = plan_model(build("tidy"), 8, "float32", gc.Adam())
    source = render_model(plan)[0]
    assert not re.search(r"\{\n[ \t]*\n|\n[ \t]*\n[ \t]+\}", source)
