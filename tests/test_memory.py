"""Memory planning (graphc/passes/memory.py): one arena, transient tensors share it safely."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.compiler import plan_model
from graphc.kernels import reads, writes
from graphc.passes.memory import ALIGN, intervals, place, seam


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _mlp(widths: list[int], activations: list[str], skip: bool) -> gc.Graph:
    g = gc.Graph("mem")
    x = g.input("x", widths[0])
    y = g.input("y", (), dtype="int32")
    h = x
    previous = None
    for k, (width, act) in enumerate(zip(widths[1:], activations)):
        out = gc.dense(h, width, activation=act, name=f"layer{k}")
        if skip and previous is not None and previous.shape == out.shape:
            out = out + previous  # a residual connection: one more consumer, δ accumulation
        previous, h = h, out
    logits = gc.dense(h, 3, name="logits")
    g.output("logits", logits)
    g.minimize(gc.softmax_cross_entropy(logits, y))
    return g


def check_plan(plan) -> None:
    """No two tensors alive at once share a byte; everything fits the arena; arena <= Σ sizes."""
    memory = plan.memory
    persistent = sorted(
        (offset, memory.sizes[name], name) for name, offset in memory.persistent.items()
    )
    for (o1, s1, n1), (o2, _, n2) in zip(persistent, persistent[1:]):
        assert o1 + s1 <= o2, f"persistent {n1} and {n2} overlap"
    if persistent:
        assert persistent[-1][0] + persistent[-1][1] <= memory.persistent_bytes
    for program in plan.programs:
        spans = intervals(list(program.kernels), set(program.keep))
        offsets = memory.transient[program.name]
        assert set(spans) == set(offsets)
        names = sorted(spans)
        for name in names:
            offset = offsets[name]
            assert offset % ALIGN == 0
            assert offset >= memory.persistent_bytes, f"{name} overlaps the persistent tensors"
            assert offset + memory.sizes[name] <= memory.arena_bytes
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                (a0, a1), (b0, b1) = spans[a], spans[b]
                if a1 < b0 or b1 < a0:
                    continue  # never alive together
                lo_a, hi_a = offsets[a], offsets[a] + memory.sizes[a]
                lo_b, hi_b = offsets[b], offsets[b] + memory.sizes[b]
                assert hi_a <= lo_b or hi_b <= lo_a, (
                    f"{program.name}: {a} {spans[a]} at [{lo_a}, {hi_a}) and {b} {spans[b]} "
                    f"at [{lo_b}, {hi_b}) are alive together and overlap"
                )
        # planned for a thread team, batched tensors that take turns on the same bytes
        # leave each byte with one thread (without one, any free bytes will do)
        batched = set()
        if memory.threads:
            batched = {
                t.name
                for kernel in program.kernels
                for t in reads(kernel) + writes(kernel)
                if t.batched and t.role == "act" and t.alias_of is None
            }
        for a in sorted(batched):
            for b in sorted(batched):
                lo, hi = (
                    max(offsets[a], offsets[b]),
                    min(offsets[a] + memory.sizes[a], offsets[b] + memory.sizes[b]),
                )
                seam_a = offsets[a] + seam(memory.sizes[a], plan.batch)
                seam_b = offsets[b] + seam(memory.sizes[b], plan.batch)
                assert (
                    a == b
                    or hi <= lo
                    or abs(seam_a - seam_b) < ALIGN
                    or hi <= min(seam_a, seam_b)
                    or lo >= max(seam_a, seam_b)
                ), f"{program.name}: {a} and {b} share bytes that belong to different threads"
        # every tensor a kernel touches is either persistent, an input, or planned here
        for kernel in program.kernels:
            for t in reads(kernel) + writes(kernel):
                owner = t.alias_of or t.name
                assert owner in memory.persistent or owner in offsets or t.role == "input", (
                    f"{kernel.name}: {owner} has no place in the arena"
                )
    # with 64-byte alignment per tensor, the bound is the sum of aligned sizes
    total = sum(_aligned(size) for size in memory.sizes.values())
    assert memory.arena_bytes <= total


@settings(max_examples=10, deadline=None)
@given(
    widths=st.lists(st.integers(1, 9), min_size=2, max_size=5),
    activations=st.lists(
        st.sampled_from(["tanh", "relu", "sigmoid", "softplus"]), min_size=5, max_size=5
    ),
    skip=st.booleans(),
    batch=st.integers(1, 17),
    dtype=st.sampled_from(["float32", "float64"]),
    threads=st.booleans(),
)
def test_random_mlps_plan_safely(widths, activations, skip, batch, dtype, threads):
    plan = plan_model(_mlp(widths, activations, skip), batch, dtype, gc.Adam(), lanes=threads)
    assert plan.memory.threads == threads
    check_plan(plan)


@pytest.mark.parametrize("depth", [1, 3, 6])
def test_deep_networks_reuse_memory(depth):
    widths = [7] + [5] * depth
    plan = plan_model(_mlp(widths, ["tanh"] * depth, False), 16, "float32", gc.SGD(0.1))
    check_plan(plan)
    memory = plan.memory
    transient_total = sum(
        _aligned(size) for name, size in memory.sizes.items() if name not in memory.persistent
    )
    peak = memory.arena_bytes - memory.persistent_bytes
    assert peak == max(memory.transient_peak.values())
    if depth >= 3:
        assert peak < transient_total, "activations of a deep net should share memory"


def test_a_convnet_plans_safely():
    """LeNet's shape: per-sample tensors of many sizes take turns on the same bytes."""
    g = gc.Graph("mem_cnn")
    x = g.input("x", (1, 16, 16))
    y = g.input("y", (), dtype="int32")
    h = gc.max_pool2d(gc.conv2d(x, 4, 3, padding=1, activation="relu", name="c1"), 2)
    h = gc.max_pool2d(gc.conv2d(h, 8, 3, activation="relu", name="c2"), 2)
    h = gc.dense(gc.flatten(h), 12, activation="relu", name="fc")
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, 5, name="out"), y))
    for threads in (True, False):
        check_plan(plan_model(g, 16, "float32", gc.SGD(0.1, momentum=0.9), lanes=threads))


def test_kernel_counts_of_a_two_layer_mlp():
    """Bias and activation fuse into the GEMM; δ = f'(·)(δ·Wᵀ) fuses into the backward GEMM."""
    g = gc.Graph("counts")
    x = g.input("x", 3)
    y = g.input("y", 7)
    h = gc.dense(x, 5, activation="tanh", name="hidden")
    out = gc.dense(h, 7, activation="sigmoid", name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    plan = plan_model(g, 8, "float32", gc.SGD(0.1))
    programs = {p.name: p for p in plan.programs}
    assert len(programs["infer"].kernels) == 2  # two GEMMs with epilogues
    assert len(programs["eval"].kernels) == 3  # + the loss
    # grad: 2 forward GEMMs (the output's epilogue also computes δ_out), loss, δ_hidden GEMM,
    # 2 weight-gradient GEMMs and 2 bias reductions
    assert len(programs["grad"].kernels) == 8
    assert len(programs["train"].kernels) == 8 + 4  # + one update per parameter
    check_plan(plan)


def test_place_by_hand():
    sizes = {"a": 100, "b": 64, "c": 64, "d": 200}
    spans = {"a": (0, 1), "b": (1, 2), "c": (2, 3), "d": (3, 4)}
    offsets, peak = place(sizes, spans)
    # a and b overlap in time (kernel 1), c may reuse a's bytes, d may reuse a's and b's
    assert offsets["a"] + 100 <= offsets["b"] or offsets["b"] + 64 <= offsets["a"]
    assert offsets["b"] + 64 <= offsets["c"] or offsets["c"] + 64 <= offsets["b"]
    assert peak <= _aligned(100) + _aligned(64) + _aligned(200)
    assert peak == max(_aligned(offsets[n] + sizes[n]) for n in sizes)


def test_batched_tensors_reuse_bytes_their_own_thread_wrote():
    """With seams, a dead tensor's bytes go to a new one only where each byte stays on the
    same side of both seams (the same thread's rows); otherwise the new one goes higher."""
    sizes = {"a": 1024, "b": 512, "c": 768, "d": 256}
    spans = {"a": (0, 0), "b": (0, 1), "c": (1, 2), "d": (3, 4)}
    seams = {name: size // 2 for name, size in sizes.items()}
    offsets, peak = place(sizes, spans, seams)
    # a lives only before c: without seams c would start at a's offset, its seam 128 bytes
    # below a's; with them, c is centred on a's seam
    assert offsets["c"] + 384 == offsets["a"] + 512
    # d comes after all three: the lowest bytes whose halves agree are on a's seam too
    assert offsets["d"] + 128 == offsets["a"] + 512
    plain, _ = place(sizes, spans)
    assert plain["c"] == plain["a"]
    assert peak <= sum(_aligned(size) for size in sizes.values())


@pytest.mark.needs_cc
def test_the_arena_starts_zeroed_and_aligned():
    """gc_arena_alloc (calloc, aligned by hand): every persistent tensor sits on a 64-byte
    boundary, state and gradients start at zero, and models come and go without leaks
    or double frees."""
    from graphc.codegen.c import persistent_tensors

    for _ in range(20):
        graph = _mlp([6, 5, 4], ["tanh", "relu"], False)
        model = gc.compile(graph, batch_size=4, optimizer=gc.Adam())
        for tensor in persistent_tensors(model.plan):
            view = model._view(tensor)
            assert view.ctypes.data % ALIGN == 0, tensor.name
            if tensor.role != "param":
                assert not view.any(), f"{tensor.name} does not start at zero"
        del model
