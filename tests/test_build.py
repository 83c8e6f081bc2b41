"""Build and cache (graphc/build.py): errors that help, a content-addressed cache, safe concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import graphc as gc
import graphc.build as build
import graphc.codegen.c as codegen

pytestmark = pytest.mark.needs_cc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _graph(name: str = "built") -> gc.Graph:
    g = gc.Graph(name)
    x = g.input("x", 3)
    y = g.input("y", 5)
    out = gc.dense(x, 5, activation="tanh", name="out")
    g.output("out", out)
    g.minimize(gc.mse(out, y))
    return g


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A cache of this test's own, so that 'first build' really compiles."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(directory))
    return directory


def test_compile_error_carries_log_and_source_path(private_cache):
    broken = "int broken(void) { return undeclared_name; }\n"
    with pytest.raises(gc.CompileError) as info:
        build.build_c("broken", broken, "/* header */\n", "int broken(void);")
    error = info.value
    assert "undeclared_name" in error.log
    assert os.path.isfile(error.source_path)
    with open(error.source_path) as f:
        assert f.read() == broken
    assert error.source_path in str(error)
    assert "undeclared_name" in str(error)
    assert str(private_cache) in error.source_path


def test_compile_error_from_gc_compile(private_cache, monkeypatch):
    real_render = codegen.render_model

    def render_broken(plan):
        source, header, cdef = real_render(plan)
        return source + "\nstatic int oops = missing_symbol;\n", header, cdef

    monkeypatch.setattr(codegen, "render_model", render_broken)
    with pytest.raises(gc.CompileError) as info:
        gc.compile(_graph("broken_model"))
    assert "missing_symbol" in info.value.log
    assert info.value.source_path.endswith("broken_model.c")
    assert os.path.isfile(info.value.source_path)
    # nothing half-built is left behind as a library
    directory = os.path.dirname(info.value.source_path)
    assert not [n for n in os.listdir(directory) if n.endswith(".so")]


def test_missing_compiler_from_cc(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(gc.CompilerNotFoundError) as info:
        gc.compile(_graph("no_cc"))
    message = str(info.value)
    assert "/nonexistent/cc" in message and "CC" in message


def test_no_compiler_on_path(monkeypatch, tmp_path):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory
    with pytest.raises(gc.CompilerNotFoundError, match="no C compiler found.*gcc"):
        build.find_compiler()


def test_second_compile_hits_the_cache(private_cache, monkeypatch):
    first = gc.compile(_graph("cached"), batch_size=4, seed=1)
    mtime = os.stat(first.library_path).st_mtime_ns
    compiled = []
    real_run = subprocess.run

    def recording_run(command, *args, **kwargs):
        compiled.append(command)
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(build.subprocess, "run", recording_run)
    second = gc.compile(_graph("cached"), batch_size=4, seed=1)
    assert compiled == [], "a cached model was compiled again"
    assert second.library_path == first.library_path
    assert os.stat(second.library_path).st_mtime_ns == mtime
    x = np.ones((2, 3))
    np.testing.assert_array_equal(first.predict(x), second.predict(x))
    # another batch size is another source, hence another entry
    third = gc.compile(_graph("cached"), batch_size=5)
    assert third.library_path != first.library_path
    assert len(compiled) == 1
    # so are other flags
    flags = build.default_flags(build.find_compiler()) + ["-DGC_TEST_FLAG=1"]
    gc.compile(_graph("cached"), batch_size=4, cflags=flags)
    assert len(compiled) == 2
    assert gc.clear_cache() == 3
    assert os.listdir(private_cache) == []


def test_flag_probes_are_kept_in_the_cache(private_cache, monkeypatch):
    """A compiler probe's answer is written to the cache, so that a later process that finds
    its model cached starts no compiler; clear_cache removes the answers too."""
    cc, code = build.find_compiler(), "int main(void){return 0;}\n"
    build._supports.cache_clear()
    try:
        assert build._supports(cc, "-O2", code)
        assert not build._supports(cc, "-fno-such-flag-for-graphc", code)
        assert len(os.listdir(private_cache / "probes")) == 2
        build._supports.cache_clear()  # as if in a new process

        def no_compiler(*args, **kwargs):
            raise AssertionError(f"a probe ran the compiler again: {args}")

        monkeypatch.setattr(build.subprocess, "run", no_compiler)
        assert build._supports(cc, "-O2", code)
        assert not build._supports(cc, "-fno-such-flag-for-graphc", code)
    finally:
        build._supports.cache_clear()
    assert gc.clear_cache() == 0
    assert not (private_cache / "probes").exists()


def test_a_compiled_graph_is_planned_once(private_cache, monkeypatch):
    """A second compile of an equal graph takes its plan and sources from the cache (no δ
    pass, no rendering) and trains the same; any change to the graph, an option or the
    optimizer is a new key; an unreadable record is a miss, then replaced."""
    import graphc.compiler as compiler

    x = np.linspace(-1, 1, 12).reshape(4, 3)
    first = gc.compile(_graph("planned"), batch_size=4, dtype="float64")
    plans = private_cache / "plans"
    assert len(os.listdir(plans)) == 1

    def no_planning(*args, **kwargs):
        raise AssertionError("planned again")

    planner = compiler.plan_model
    monkeypatch.setattr(compiler, "plan_model", no_planning)
    again = gc.compile(_graph("planned"), batch_size=4, dtype="float64")
    assert again.source == first.source and again.library_path == first.library_path
    np.testing.assert_array_equal(again.predict(x), first.predict(x))
    with pytest.raises(AssertionError, match="planned again"):
        gc.compile(_graph("planned"), batch_size=5, dtype="float64")
    with pytest.raises(AssertionError, match="planned again"):
        gc.compile(_graph("planned"), batch_size=4, dtype="float64", optimizer=gc.SGD(0.5))
    other = _graph("planned")
    other.params[0].attrs["trainable"] = False
    with pytest.raises(AssertionError, match="planned again"):
        gc.compile(other, batch_size=4, dtype="float64")
    monkeypatch.setattr(compiler, "plan_model", planner)
    (record,) = plans.iterdir()
    record.write_bytes(b"not a pickle")
    repaired = gc.compile(_graph("planned"), batch_size=4, dtype="float64")
    np.testing.assert_array_equal(repaired.predict(x), first.predict(x))
    assert record.read_bytes() != b"not a pickle"
    assert gc.clear_cache() == 1 and not plans.exists()


def test_builds_without_openmp_are_warning_free(private_cache, monkeypatch):
    """A compiler without OpenMP (clang without libomp) ignores the pragmas, quietly."""
    monkeypatch.setattr(build, "openmp_flags", lambda cc: [])
    flags = build.default_flags(build.find_compiler())
    assert "-fopenmp" not in flags and "-Werror" in flags
    model = gc.compile(_graph("serial"), batch_size=4, dtype="float64")
    assert model._library.flags == tuple(flags)
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    p = model.params
    np.testing.assert_allclose(model.predict(x), np.tanh(x @ p["out.W"] + p["out.b"]), rtol=1e-12)
    model.fit(x, np.zeros((2, 5)), epochs=2)


def test_concurrent_builds_in_threads(private_cache):
    with ThreadPoolExecutor(max_workers=2) as pool:
        models = list(pool.map(lambda _: gc.compile(_graph("threads"), seed=2), range(2)))
    assert models[0].library_path == models[1].library_path
    x = np.ones((3, 3))
    np.testing.assert_array_equal(models[0].predict(x), models[1].predict(x))
    leftovers = [
        n for n in os.listdir(os.path.dirname(models[0].library_path)) if n.startswith(".tmp")
    ]
    assert leftovers == []


def test_concurrent_builds_in_processes(private_cache):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import numpy as np
        import graphc as gc
        from test_build import _graph
        model = gc.compile(_graph("processes"), seed=3)
        print(model.library_path, float(model.predict(np.ones((1, 3))).sum()))
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    lines = {out.strip() for out, _ in results}
    assert len(lines) == 1, lines  # the same library, the same prediction
    library = lines.pop().split()[0]
    assert os.path.isfile(library)
    leftovers = [n for n in os.listdir(os.path.dirname(library)) if n.startswith(".tmp")]
    assert leftovers == []


@pytest.mark.needs_cc
def test_freeing_the_last_model_leaves_the_openmp_threads_running_code(tmp_path):
    """The OpenMP runtime's pool threads outlive a model.  If its library were unmapped
    when the last Model goes, they would run unmapped code: the process crashed at exit
    with OMP_WAIT_POLICY=active (spinning threads) before libraries were loaded with
    RTLD_NODELETE."""
    script = tmp_path / "free_model.py"
    script.write_text(
        "import gc as collector, time\n"
        "import numpy as np\n"
        "import graphc as gc\n"
        "from graphc.build import default_flags, find_compiler\n"
        "g = gc.Graph('team_of_two')\n"
        "x = g.input('x', 16)\n"
        "y = g.input('y', 4)\n"
        "g.minimize(gc.mse(gc.dense(x, 4, name='out'), y))\n"
        "flags = default_flags(find_compiler()) + ['-DGC_TEAM_FLOPS=0']\n"
        "m = gc.compile(g, batch_size=8, optimizer=gc.SGD(), num_threads=2, cflags=flags)\n"
        "m.train_step(np.ones((8, 16), np.float32), np.ones((8, 4), np.float32))\n"
        "del m\n"
        "collector.collect()\n"
        "time.sleep(0.2)\n"
        "print('exited cleanly')\n"
    )
    env = {**os.environ, "OMP_WAIT_POLICY": "active"}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "exited cleanly" in result.stdout
