"""One runtime for every stage: plan (driver) -> process one unit (workers) -> finish
(driver), with completion markers, resume, counters and timings owned here once.

A stage subclasses :class:`StageRuntime` and fills four narrow hooks:

1. ``plan(config) -> plan`` (driver, before any work): validate, prepare the output
   folders (:meth:`StageRuntime.prepare_root` refuses to mix runs and checks
   ``--resume``), write the run record.
2. ``units(plan) -> list`` : the work items (input files, shard numbers).
3. ``process(plan, unit, meter) -> result`` (a worker, once per unit): do the unit's
   work and write its parts; report counters with ``meter(name, n)`` and time its
   ``read`` / ``compute`` / ``write`` phases with ``meter.phase(...)`` /
   ``meter.timed(...)``.
4. ``finish(plan) -> manifest`` (driver, after every unit): gather the markers and write
   the stage's manifest, last.

What the base does around ``process`` (:meth:`StageRuntime.run`):

* ``--resume``: a unit whose completion marker exists is not processed again; its result
  is read back from the marker and ``<done>_skipped`` is counted;
* the marker: the result as one line of JSON (keys sorted), written atomically after the
  unit's parts, so a marker means the unit is complete;
* counters: ``<done>`` (``files`` / ``shards``) once per unit committed, plus what the
  stage counts; timings: the seconds of each phase, given to the caller's ``timings``
  callback in milliseconds (Beam counters are integers), never written to a file.

A unit can also run away from the caller's counters (:meth:`StageRuntime.run_detached`:
in another thread or another process) and hand them back afterwards
(:meth:`UnitRun.replay`), which is how shards fill in threads and how the embed stage's
model serves every process of a host.

Nothing here imports Beam: ``pipeline/`` fans the units out over workers
(``pipeline.common.StageTransform``), tests and tools call :meth:`StageRuntime.run` in a
loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from tda.attribution.io.fs import atomic_write_text, read_json
from tda.attribution.io.parts import StageError, check_resumable, nonempty, remove_temp_files

__all__ = [
    "LATER_STAGES",
    "PHASES",
    "Counter",
    "Meter",
    "StageRuntime",
    "UnitRun",
    "as_meter",
    "discard",
    "invalidate_later",
]

Counter = Callable[[str, int], None]
PlanT = TypeVar("PlanT")
UnitT = TypeVar("UnitT")
ResultT = TypeVar("ResultT")

# Where a unit's time goes: reading its input, computing, writing its outputs (and
# marker). A stage's process() puts each step in one phase; phases do not nest.
PHASES = ("read", "compute", "write")


# The stages built from each stage's output (ROOT/<folder>), in flow order: what an
# --overwrite of it leaves stale, with the command that rebuilds each.
LATER_STAGES = {
    "chunks": (("embeddings", "tda embed ROOT --model SPEC --overwrite"),
               ("index", "tda index build ROOT --overwrite")),
    "embeddings": (("index", "tda index build ROOT --overwrite"),),
}  # fmt: skip


def invalidate_later(fs, root: str, stage: str) -> list[str]:
    """``stage`` (``chunks`` | ``embeddings``) of the build root ``root`` is being
    overwritten: the later stages' manifests, which record the old output's sha256, are
    moved aside to ``_stale-manifest.json`` with a ``_stale.json`` note beside them, so
    every reader refuses them with one line naming the rebuild (instead of reading
    vectors of chunks that no longer exist). -> the manifests invalidated."""
    done = []
    for later, command in LATER_STAGES.get(stage, ()):
        folder = f"{root.rstrip('/')}/{later}"
        manifest = f"{folder}/manifest.json"
        if not fs.exists(manifest):
            continue
        note = {
            "why": f"{stage}/ was rebuilt with --overwrite after {later}/ was built from it",
            "rebuild": command.replace("ROOT", root),
        }
        atomic_write_text(fs, f"{folder}/_stale.json", json.dumps(note, sort_keys=True) + "\n")
        fs.mv(manifest, f"{folder}/_stale-manifest.json")
        done.append(manifest)
    return done


def discard(name: str, n: int) -> None:
    """A counter that drops what it is given."""


class Meter:
    """What one unit reports while it runs: counters, passed straight to the caller's
    ``count(name, n)``, and the seconds spent in each of :data:`PHASES`."""

    __slots__ = ("_count", "seconds")

    def __init__(self, count: Counter = discard) -> None:
        self._count = count
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    def __call__(self, name: str, n: int) -> None:
        self._count(name, n)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as phase ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def timed(self, name: str, items: Iterable) -> Iterator:
        """``items``, with the time spent producing each one counted as phase ``name``
        (for streamed reads, whose items are consumed by other phases)."""
        it = iter(items)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.seconds[name] += time.perf_counter() - start
                return
            self.seconds[name] += time.perf_counter() - start
            yield item

    def milliseconds(self) -> dict[str, int]:
        """The phases' seconds as whole milliseconds (what counters can hold)."""
        return {name: round(1000 * s) for name, s in self.seconds.items()}


def as_meter(count: Counter | Meter) -> Meter:
    """``count`` as a :class:`Meter` (itself when it is one): the stages' module-level
    functions accept a plain ``count(name, n)`` too."""
    return count if isinstance(count, Meter) else Meter(count)


@dataclass(frozen=True)
class UnitRun(Generic[ResultT]):
    """A unit run away from the caller's counters: its result, the counts it made (in
    order) and its milliseconds per phase. Picklable when the result is."""

    result: ResultT
    counts: tuple[tuple[str, int], ...]
    milliseconds: dict[str, int]

    def replay(self, count: Counter = discard, timings: Counter = discard) -> ResultT:
        """Hand the counts and timings to the caller's callbacks; -> the result."""
        for name, n in self.counts:
            count(name, n)
        for phase, ms in self.milliseconds.items():
            timings(phase, ms)
        return self.result


class StageRuntime(Generic[PlanT, UnitT, ResultT]):
    """A stage: the four hooks (``plan``, ``units``, ``process``, ``finish``) and the
    optional ones below; the base runs units with markers, resume, counters, timings.

    Class attributes: ``name`` (counters go to the Beam namespace ``tda.<name>``),
    ``done`` (the counter of committed units: ``files`` / ``shards``; skipped ones count
    ``<done>_skipped``), ``error`` (the stage's one-line error), ``held`` (what a
    finished run in the output folder is called in messages) and ``record`` (the result
    type, read back from markers with its ``from_dict``).
    """

    name: ClassVar[str] = ""
    done: ClassVar[str] = "files"
    error: ClassVar[type[StageError]] = StageError
    held: ClassVar[str] = "a run"
    record: ClassVar[Any] = None

    # ---- hooks ----------------------------------------------------------------------

    def plan(self, config: Any) -> PlanT:
        """Driver: validate ``config``, prepare the output, write the run record."""
        raise NotImplementedError

    def units(self, plan: PlanT) -> list[UnitT]:
        """The work items, in order (each is processed once, by one worker)."""
        raise NotImplementedError

    def process(self, plan: PlanT, unit: UnitT, meter: Meter) -> ResultT:
        """Worker: do one unit's work and write its parts (not its marker)."""
        raise NotImplementedError

    def finish(self, plan: PlanT) -> Any:
        """Driver: gather the units' markers into the stage's manifest (written last)."""
        raise NotImplementedError

    # ---- optional hooks -------------------------------------------------------------

    def setup(self, plan: PlanT) -> None:
        """Worker, once before its first unit: load what ``process`` needs (a
        tokenizer, a model) from its SPEC, never pickled from the driver."""

    def markers(self, plan: PlanT) -> tuple[Any, str] | None:
        """(fsspec filesystem, folder) of the completion markers; None: the stage keeps
        none (every unit runs, nothing is skipped)."""
        return None

    def marker(self, plan: PlanT, unit: UnitT) -> str:
        """The completion marker of ``unit`` (a path in :meth:`markers`' filesystem)."""
        raise NotImplementedError

    def resuming(self, plan: PlanT) -> bool:
        """True when finished units are to be skipped (``--resume``)."""
        return False

    def elements(self, plan: PlanT) -> list:
        """What a fan-out hands to workers: one unit each by default."""
        return list(self.units(plan))

    def run_element(
        self, plan: PlanT, element: Any, count: Counter = discard, timings: Counter = discard
    ) -> Iterator[Any]:
        """One element of :meth:`elements` -> its output(s) (by default: the unit's
        result)."""
        yield self.run(plan, element, count, timings)

    # ---- markers --------------------------------------------------------------------

    def read_marker(self, plan: PlanT, unit: UnitT) -> ResultT | None:
        """The result recorded by ``unit``'s completion marker, or None."""
        where = self.markers(plan)
        if where is None:
            return None
        path = self.marker(plan, unit)
        if not where[0].exists(path):
            return None
        return self.record.from_dict(read_json(where[0], path))

    def write_marker(self, plan: PlanT, unit: UnitT, result: ResultT) -> None:
        """Commit ``unit``: its result as one line of JSON with sorted keys."""
        where = self.markers(plan)
        if where is not None:
            text = json.dumps(result.to_dict(), sort_keys=True) + "\n"
            atomic_write_text(where[0], self.marker(plan, unit), text)

    # ---- running units --------------------------------------------------------------

    def run(
        self, plan: PlanT, unit: UnitT, count: Counter = discard, timings: Counter = discard
    ) -> ResultT:
        """One unit: skipped (its marker's result) when resuming and finished, else
        :meth:`commit`."""
        done = self.finished(plan, unit, count)
        return done if done is not None else self.commit(plan, unit, count, timings)

    def finished(self, plan: PlanT, unit: UnitT, count: Counter = discard) -> ResultT | None:
        """When resuming: the result of a finished ``unit`` (counting it as skipped),
        else None."""
        if not self.resuming(plan):
            return None
        done = self.read_marker(plan, unit)
        if done is not None:
            count(f"{self.done}_skipped", 1)
        return done

    def commit(
        self, plan: PlanT, unit: UnitT, count: Counter = discard, timings: Counter = discard
    ) -> ResultT:
        """Process ``unit``, write its marker, count it; its phases' milliseconds go to
        ``timings(phase, ms)``."""
        meter = as_meter(count)
        result = self.process(plan, unit, meter)
        with meter.phase("write"):
            self.write_marker(plan, unit, result)
        meter(self.done, 1)
        for phase, ms in meter.milliseconds().items():
            timings(phase, ms)
        return result

    def run_detached(
        self, plan: PlanT, unit: UnitT, skip_finished: bool = True
    ) -> UnitRun[ResultT]:
        """:meth:`run` (``skip_finished=False``: :meth:`commit`) with its counts and
        timings collected instead of reported: for a unit run in another thread or
        process, replayed by the caller (:meth:`UnitRun.replay`)."""
        counts: list[tuple[str, int]] = []
        milliseconds: dict[str, int] = {}
        step = self.run if skip_finished else self.commit
        result = step(
            plan,
            unit,
            lambda name, n: counts.append((name, n)),
            lambda phase, ms: milliseconds.__setitem__(phase, ms),
        )
        return UnitRun(result, tuple(counts), milliseconds)

    # ---- the driver's checks --------------------------------------------------------

    def sweep_temp_files(self) -> None:
        """Driver, once every unit is committed: delete the ``_tmp-`` files of the
        ``temp_folders`` :meth:`prepare_root` was given. A worker killed mid-write leaves
        one; the runner reran its unit (same bytes, another temp name), so it is debris."""
        if getattr(self, "_temp_folders", None) is not None:
            remove_temp_files(*self._temp_folders)

    def prepare_root(
        self,
        fs,
        config: Any,
        folders: Sequence[str],
        run_record: str,
        record: str,
        temp_folders: Sequence[str],
        no_record_fix: str = "rerun with --overwrite",
    ) -> bool:
        """Make ``folders`` (the first one named in messages) ready for a run whose run
        record is ``record``: empty is fine; ``config.overwrite`` removes them;
        ``config.resume`` needs the same run record at ``run_record`` (and removes what a
        killed run left half-written in ``temp_folders``); else a one-line error.
        Returns True when resuming."""
        self._temp_folders = (fs, tuple(temp_folders))  # for sweep_temp_files
        main = folders[0]
        if not any(nonempty(fs, folder) for folder in folders):
            return False
        if config.overwrite:
            for folder in folders:
                if fs.exists(folder):
                    fs.rm(folder, recursive=True)
            return False
        if config.resume:
            if not fs.exists(run_record):
                raise self.error(f"{main} holds output without a run record; {no_record_fix}")
            check_resumable(json.loads(record), read_json(fs, run_record), main, self.error)
            remove_temp_files(fs, temp_folders)
            return True
        raise self.error(
            f"{main} already holds {self.held}; pass --resume to continue it or "
            f"--overwrite to replace it"
        )
