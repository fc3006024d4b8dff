"""Pick torch's intra-op thread count per phase (prefill, decode) by measured speed.

On a small CPU box the HTTP event loop and the torch worker threads share a few cores. When a core is
taken (by our own event loop streaming chunks, or by another process), an OpenMP parallel region
waits for its descheduled thread at every op; a decode step of ~400 ops then takes 10-50x longer.
One thread fewer leaves a core free, but costs speed on an idle machine. Which is faster depends on
the moment, so the engine measures: each phase uses the candidate with the best recent (median) time
per unit of work and now and then re-tries the other one: rarely when it was much slower, and ever more
rarely while each re-try confirms the choice and the chosen count's own time holds steady (a trial of
1 thread every ~26 decode steps of SmolLM2 int8 at 8 rows cost ~5 % of a busy server's throughput). Only
small calls try a candidate out: a burst's prefill run on the slower setting would delay every
request in it (8 prompts x 22 tokens, SmolLM2 fp32: 130 -> 195 ms), so large calls take the best one.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque

import torch

_WINDOW = 7  # recent measurements kept per candidate
_WARMUP = 3  # measurements of every candidate before exploiting
_EXPLORE_EVERY = 16  # base interval between re-tries of the other candidate
_EXPLORE_MAX = 512
_DRIFT = 1.25  # the chosen count's time moved by this factor since a trial confirmed it: re-try soon again
EXPLORE_MAX_WORK = 64  # calls with more work (e.g. prefill tokens) never try a candidate out


def thread_candidates() -> list[int]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    current = torch.get_num_threads()
    top = max(1, min(cores, current))
    return sorted({max(1, top - 1), top})


class _Phase:
    def __init__(self, candidates: list[int]) -> None:
        self.candidates = candidates
        self.recent: dict[int, deque[float]] = {n: deque(maxlen=_WINDOW) for n in candidates}
        self.calls = 0
        self.next_explore = _EXPLORE_EVERY
        self.trial: tuple[int, int] | None = None  # (candidate being re-tried, the best before it)
        self.confirmed = 0  # trials in a row that kept the same best: each doubles the interval
        self.reference: float | None = None  # the best's cost when a trial last confirmed it

    def cost(self, n: int) -> float | None:
        """Median of the recent costs: a step slowed by another process once does not flip the choice."""
        recent = self.recent[n]
        return statistics.median(recent) if recent else None

    def pick(self, explore: bool = True) -> int:
        self.calls += 1
        measured = [n for n in self.candidates if len(self.recent[n]) >= _WARMUP]
        if len(measured) < len(self.candidates):
            if explore:
                return next(n for n in self.candidates if n not in measured)
            # a large call: the best measured one, else torch's own setting
            return min(measured, key=lambda n: self.cost(n) or 0.0) if measured else self.candidates[-1]
        best = min(self.candidates, key=lambda n: self.cost(n) or 0.0)
        self._review(best)
        if explore and self.calls >= self.next_explore:
            others = [n for n in self.candidates if n != best]
            other = min(others, key=lambda n: len(self.recent[n]))
            slower = (self.cost(other) or 1.0) / max(self.cost(best) or 1.0, 1e-12)
            interval = _EXPLORE_EVERY * max(1.0, slower) * 2**self.confirmed
            self.next_explore = self.calls + int(min(_EXPLORE_MAX, interval))
            self.trial = (other, best)
            # measured afresh (_WARMUP calls in a row): its old times may come from a busier moment (a
            # server that warmed up while others were loading kept 1 thread for hundreds of steps)
            self.recent[other].clear()
            return other
        return best

    def _review(self, best: int) -> None:
        """Back off after a trial that kept the best; explore soon again when the best's own time drifts (a
        process took a core, or the batch changed), since the other count may have become the faster."""
        cost = self.cost(best) or 0.0
        if self.trial is not None:  # measured by now: every candidate is, on this branch of `pick`
            self.confirmed = self.confirmed + 1 if best == self.trial[1] else 0
            self.reference, self.trial = cost, None
        elif self.reference and not 1 / _DRIFT <= cost / self.reference <= _DRIFT:
            self.confirmed, self.reference = 0, None
            self.next_explore = min(self.next_explore, self.calls + _EXPLORE_EVERY)

    def record(self, n: int, seconds: float, work: float) -> None:
        self.recent[n].append(seconds / max(work, 1e-9))


class ThreadTuner:
    """`with tuner.phase("decode", work=rows):` sets the thread count and records how long it took."""

    def __init__(self, candidates: list[int] | None = None) -> None:
        self.candidates = candidates or thread_candidates()
        self.phases: dict[str, _Phase] = {}
        self._initial = self._current = torch.get_num_threads()

    def run(self, phase: str, work: float, fn, *args, like: str | None = None):  # type: ignore[no-untyped-def]
        """fn(*args) on the thread count chosen for `phase`, or with `like`, the one `like` runs best on (no
        trials: for steps that must not be slowed, e.g. a decode step that carries a prompt chunk)."""
        n = self.choose(phase, work) if like is None else self.follow(phase, like)
        started = time.perf_counter()
        result = fn(*args)
        self.record(phase, n, time.perf_counter() - started, work)
        return result

    def choose(self, phase: str, work: float) -> int:
        """Set the thread count for a call of this phase; `record` its time afterwards (what `run` does, for
        steps taken inside a library loop, e.g. transformers' beam search)."""
        state = self.phases.setdefault(phase, _Phase(self.candidates))
        if len(self.candidates) > 1:
            n = state.pick(explore=work <= EXPLORE_MAX_WORK)
        else:  # nothing to choose (one core, or torch set to one thread); still counted
            state.calls += 1
            n = self.candidates[0]
        self._set(n)
        return n

    def follow(self, phase: str, like: str) -> int:
        """Set the thread count `like` is best on (torch's own before it is measured) for a call of `phase`."""
        self.phases.setdefault(phase, _Phase(self.candidates))
        leader = self.phases.get(like)
        measured = [] if leader is None else [n for n in leader.candidates if leader.cost(n) is not None]
        n = min(measured, key=lambda c: leader.cost(c) or 0.0) if measured else self.candidates[-1]  # type: ignore[union-attr]
        self._set(n)
        return n

    def _set(self, n: int) -> None:
        if n != self._current:
            torch.set_num_threads(n)
            self._current = n

    def record(self, phase: str, n: int, seconds: float, work: float) -> None:
        self.phases[phase].record(n, seconds, work)

    def cost(self, phase: str) -> float | None:
        """Recent seconds per unit of work of a phase on its best thread count (None before any measurement)."""
        state = self.phases.get(phase)
        if state is None:
            return None
        costs = [c for c in (state.cost(n) for n in state.candidates) if c is not None]
        return min(costs) if costs else None

    def restore(self) -> None:
        """Put torch's thread count back as it was (the engine is closing)."""
        if self._current != self._initial:
            torch.set_num_threads(self._initial)
            self._current = self._initial

    def describe(self) -> dict[str, dict[int, float | None]]:
        return {name: {n: state.cost(n) for n in state.candidates} for name, state in self.phases.items()}
