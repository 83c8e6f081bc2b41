"""The one place graph names become C identifiers."""

from __future__ import annotations

import re

C_KEYWORDS = frozenset(
    """auto break case char const continue default do double else enum extern float for goto
    if inline int long register restrict return short signed sizeof static struct switch
    typedef union unsigned void volatile while _Bool _Complex _Imaginary bool true false
    main exp log sqrt pow tanh fabs fmax fmin n m i j k r c acc""".split()
)
#: identifiers the templates declare themselves (loop variables, locals, parameters); a
#: tensor of the same name would be shadowed by, or clash with, them
TEMPLATE_LOCALS = frozenset(
    """l p q t lr bc1 bc2 alpha rsqrt_bc2 sum total hits top lse scale best truth tile ctx r0 nr c0 nc arena
    memory loss correct count start row perm seed shuffle right step epoch threads index
    norm kept binary argc argv a v blk stop part""".split()
)
_TEMPORARY = re.compile(r"^t\d+$")  # common-subexpression temporaries are t0, t1, ...


def sanitize(name: str) -> str:
    """'hidden.W' -> 'hidden_W'; other invalid characters become '_'; never a keyword."""
    text = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not text or text[0].isdigit():
        text = "t_" + text
    if (
        text in C_KEYWORDS
        or text in TEMPLATE_LOCALS
        or _TEMPORARY.match(text)
        or text.startswith("gc_")
    ):
        text = "v_" + text
    return text


class Namer:
    """Hands out unique C identifiers derived from graph names."""

    def __init__(self, reserved: tuple[str, ...] = ()) -> None:
        self._used: set[str] = set(reserved)
        self._given: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name in self._given:
            return self._given[name]
        base = sanitize(name)
        candidate, k = base, 1
        while candidate in self._used:
            k += 1
            candidate = f"{base}_{k}"
        self._used.add(candidate)
        self._given[name] = candidate
        return candidate
