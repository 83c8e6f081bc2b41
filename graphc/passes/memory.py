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
    #: whether batched tensors kept to their seams (planned for a thread team)
    threads: bool = False

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


def seam(nbytes: int, batch: int) -> int:
    """Where a second thread's rows begin in a batched tensor of ``nbytes``: static
    schedules give the first thread half the rows, rounded up."""
    return nbytes // batch * ((batch + 1) // 2)


def place(
    sizes: dict[str, int],
    spans: dict[str, tuple[int, int]],
    seams: dict[str, int] | None = None,
) -> tuple[dict[str, int], int]:
    """Greedy by size: each tensor goes to the lowest offset free during its whole span.

    ``seams`` gives, for each tensor whose rows are shared out by sample (a batched
    tensor), the byte offset inside it where the second thread's rows begin.  Such a tensor
    only takes the bytes of a dead one if each byte would stay with the same thread: the
    two seams coincide, or the shared bytes lie on the same side of both.  The kernels that
    run per sample split the batch the same way, so each thread then writes only cache
    lines it wrote before; across two dies a line the other thread last held costs a
    transfer on every write.  The lowest such offset is taken, up to the first free one
    above every tensor placed so far.
    """
    seams = seams or {}
    placed: list[tuple[int, int, int, int, int | None]] = []  # offset, end, first, last, seam
    offsets: dict[str, int] = {}

    def agrees(offset: int, end: int, seam: int, other: tuple) -> bool:
        o, e, _, _, s = other
        low, high = max(offset, o), min(end, e)
        return (
            s is None
            or high <= low
            or abs(s - seam) < ALIGN  # the same seam, up to the alignment of offsets
            or high <= min(seam, s)  # the shared bytes: first thread's rows in both
            or low >= max(seam, s)  # second thread's rows in both
        )

    for name in sorted(spans, key=lambda t: (-sizes[t], spans[t][0], t)):
        first, last = spans[name]
        size = sizes[name]
        alive = [not (p[3] < first or p[2] > last) for p in placed]
        conflicts = sorted((p[0], p[1]) for p, a in zip(placed, alive) if a)
        offset = 0
        for o, e in conflicts:
            if offset + size <= o:
                break
            offset = max(offset, _align(e))
        split = seams.get(name)
        if split is not None:
            dead = [p for p, a in zip(placed, alive) if p[4] is not None and not a]
            top = _align(max((p[1] for p in placed), default=0))
            candidates = {offset, top} | {
                (p[4] - split) // ALIGN * ALIGN for p in dead if p[4] >= split
            }
            for candidate in sorted(candidates):
                end, seam = candidate + size, candidate + split
                if all(e <= candidate or o >= end for o, e in conflicts) and all(
                    agrees(candidate, end, seam, p) for p in dead
                ):
                    offset = candidate
                    break
        offsets[name] = offset
        placed.append(
            (offset, offset + size, first, last, None if split is None else offset + split)
        )
    peak = max((o + sizes[n] for n, o in offsets.items()), default=0)
    return offsets, _align(peak)


def plan(
    persistent: list[Tensor],
    programs: dict[str, tuple[list[Kernel], set[str]]],
    batch: int,
    real_bytes: int,
    threads: bool = False,
) -> MemoryPlan:
    """Lay out persistent tensors, then each program's transients from a common base.

    ``threads``: the code shares each batch out over a thread team (the C target), so a
    batched tensor keeps to its seams (see ``place``); elsewhere any free bytes do.
    """

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
    seams: dict[str, int] = {}
    for kernels, _ in programs.values():
        for kernel in kernels:
            for t in reads(kernel) + writes(kernel):
                if t.role == "act" and t.alias_of is None:
                    transient_sizes[t.name] = max(transient_sizes.get(t.name, 0), nbytes(t))
                    if t.batched and threads:
                        seams[t.name] = seam(nbytes(t), batch)
    peaks: dict[str, int] = {}
    transient: dict[str, dict[str, int]] = {}
    for program, (kernels, keep) in programs.items():
        spans = intervals(kernels, keep)
        local, peak = place(
            {n: transient_sizes[n] for n in spans},
            spans,
            {n: seams[n] for n in spans if n in seams},
        )
        peaks[program] = peak
        transient[program] = {name: base + off for name, off in local.items()}
    sizes.update(transient_sizes)
    arena = base + max(peaks.values(), default=0)
    return MemoryPlan(offsets, transient, sizes, base, arena, peaks, threads)
