"""Shared test setup: warnings are errors in generated C, and a private model cache."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Set before graphc builds anything: every generated file compiles with -Werror, and models
# compiled by this session land in a cache of their own (removed at the end).
os.environ["GRAPHC_WERROR"] = "1"
_CACHE = tempfile.mkdtemp(prefix="graphc-test-cache-")
os.environ["GRAPHC_CACHE_DIR"] = _CACHE
# Test machines are shared and often oversubscribed: OpenMP's default active wait then makes
# each small parallel region tens of times slower (threads spin while their peer is not
# scheduled).  Results do not depend on it; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def _has_cc() -> bool:
    from graphc.build import find_compiler
    from graphc.errors import CompilerNotFoundError

    try:
        find_compiler()
    except CompilerNotFoundError:
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked needs_cc, with a visible reason, where no C compiler exists."""
    if _has_cc():
        return
    skip = pytest.mark.skip(reason="needs a C compiler (cc, gcc or clang on PATH, or CC)")
    for item in items:
        if "needs_cc" in item.keywords:
            item.add_marker(skip)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def cache_dir() -> str:
    """The session's model cache (GRAPHC_CACHE_DIR)."""
    return _CACHE


def pytest_addoption(parser: pytest.Parser) -> None:
    """--update-golden rewrites tests/golden/ from the current code generator."""
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden generated-C files in tests/golden/ instead of comparing",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """Whether this run rewrites golden files."""
    return bool(request.config.getoption("--update-golden"))
