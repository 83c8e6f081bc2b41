"""Memory planning: every buffer of a model lives at a fixed offset in one arena.

Persistent tensors (parameters, gradients, optimizer state, batch slots) come first.
Transient tensors (activations, δ's) of each program are placed by liveness: two tensors
share bytes only if no kernel of that program sees both alive.  The arena size is known
at compile time: persistent bytes + the largest transient peak over all programs.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphc.kernels import Kernel, Tensor, reads, writes

ALIGN = 64
PERSISTENT_ROLES = ("param", "grad", "state", "const", "slot")


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class MemoryPlan:
    """Byte offsets of tensors in the arena, and its size.

    ``persistent`` offsets hold in every program; ``transient[program]`` only while that
    program (an entry point's kernel sequence) runs.
    """

    persistent: dict[str, int]
    transient: dict[str, dict[str, int]]
    sizes: dict[str, int]
    persistent_bytes: int
    arena_bytes: int
    transient_peak: dict[str, int]

    def offset(self, program: str, name: str) -> int:
        """Where tensor ``name`` lives while ``program`` runs."""
        if name in self.persistent:
            return self.persistent[name]
        return self.transient[program][name]


def _owner(t: Tensor) -> str:
    return t.alias_of or t.name


def intervals(kernels: list[Kernel], keep: set[str]) -> dict[str, tuple[int, int]]:
    """[first write, last use] kernel positions of each transient tensor of a program."""
    live: dict[str, list[int]] = {}
    for pos, kernel in enumerate(kernels):
        for t in writes(kernel) + reads(kernel):
            if t.role != "act":
                continue
            span = live.setdefault(_owner(t), [pos, pos])
            span[0] = min(span[0], pos)
            span[1] = max(span[1], pos)
    end = len(kernels)
    return {name: (span[0], end if name in keep else span[1]) for name, span in live.items()}


def place(sizes: dict[str, int], spans: dict[str, tuple[int, int]]) -> tuple[dict[str, int], int]:
    """Greedy by size: each tensor goes to the lowest offset free during its whole span."""
    placed: list[tuple[int, int, int, int]] = []  # offset, end, first, last
    offsets: dict[str, int] = {}
    for name in sorted(spans, key=lambda t: (-sizes[t], spans[t][0], t)):
        first, last = spans[name]
        conflicts = sorted(
            (o, e) for o, e, start, stop in placed if not (stop < first or start > last)
        )
        offset = 0
        for o, e in conflicts:
            if offset + sizes[name] <= o:
                break
            offset = max(offset, _align(e))
        offsets[name] = offset
        placed.append((offset, offset + sizes[name], first, last))
    peak = max((o + sizes[n] for n, o in offsets.items()), default=0)
    return offsets, _align(peak)


def plan(
    persistent: list[Tensor],
    programs: dict[str, tuple[list[Kernel], set[str]]],
    batch: int,
    real_bytes: int,
) -> MemoryPlan:
    """Lay out persistent tensors, then each program's transients from a common base."""

    def nbytes(t: Tensor) -> int:
        return t.numel(batch) * (4 if t.dtype == "int32" else real_bytes)

    offsets: dict[str, int] = {}
    sizes: dict[str, int] = {}
    cursor = 0
    for t in persistent:
        if t.name in offsets:
            continue
        offsets[t.name] = cursor
        sizes[t.name] = nbytes(t)
        cursor = _align(cursor + sizes[t.name])
    base = cursor
    transient_sizes: dict[str, int] = {}
    for kernels, _ in programs.values():
        for kernel in kernels:
            for t in reads(kernel) + writes(kernel):
                if t.role == "act" and t.alias_of is None:
                    transient_sizes[t.name] = max(transient_sizes.get(t.name, 0), nbytes(t))
    peaks: dict[str, int] = {}
    transient: dict[str, dict[str, int]] = {}
    for program, (kernels, keep) in programs.items():
        spans = intervals(kernels, keep)
        local, peak = place({n: transient_sizes[n] for n in spans}, spans)
        peaks[program] = peak
        transient[program] = {name: base + off for name, off in local.items()}
    sizes.update(transient_sizes)
    return MemoryPlan(offsets, transient, sizes, base, base + max(peaks.values(), default=0), peaks)
