"""The stage runtime (attribution/stages/base.py) with a tiny fake stage: markers, resume
skips finished units, counters, per-phase timings, detached runs, the root checks."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tda.attribution.io.fs import filesystem
from tda.attribution.io.parts import StageError
from tda.attribution.stages.base import Meter, StageRuntime, UnitRun, as_meter


@dataclass(frozen=True)
class Squared:
    """The fake stage's result (and marker): a unit and its square."""

    unit: int
    square: int

    def to_dict(self) -> dict:
        return {"unit": self.unit, "square": self.square}

    @classmethod
    def from_dict(cls, data: dict) -> Squared:
        return cls(**data)


@dataclass(frozen=True)
class FakePlan:
    out: str
    n: int
    resume: bool = False


class FakeError(StageError):
    pass


class SquareStage(StageRuntime[FakePlan, int, Squared]):
    """Unit k writes part-k.txt holding k*k; counts squared += k*k; sleeps 20 ms in
    compute. ``calls`` records the units it processed (in this process)."""

    name = "square"
    done = "files"
    error = FakeError
    held = "a square run"
    record = Squared

    def __init__(self) -> None:
        self.calls: list[int] = []

    def units(self, plan: FakePlan) -> list[int]:
        return list(range(plan.n))

    def markers(self, plan: FakePlan):
        return filesystem(plan.out)[0], f"{plan.out}/_completions"

    def marker(self, plan: FakePlan, unit: int) -> str:
        return f"{plan.out}/_completions/{unit:06d}.json"

    def resuming(self, plan: FakePlan) -> bool:
        return plan.resume

    def process(self, plan: FakePlan, unit: int, meter: Meter) -> Squared:
        self.calls.append(unit)
        for _ in meter.timed("read", [unit]):
            pass
        with meter.phase("compute"):
            time.sleep(0.02)
            square = unit * unit
        with meter.phase("write"):
            Path(plan.out, f"part-{unit}.txt").write_text(str(square))
        meter("squared", square)
        return Squared(unit, square)


def _collect():
    counts: Counter = Counter()
    timings: dict[str, list[int]] = {}
    return (
        counts,
        timings,
        lambda name, n: counts.update({name: n}),
        lambda phase, ms: timings.setdefault(phase, []).append(ms),
    )


def test_run_writes_parts_then_a_sorted_json_marker_and_counts(tmp_path):
    plan = FakePlan(str(tmp_path), 3)
    stage = SquareStage()
    counts, timings, count, timing = _collect()
    results = [stage.run(plan, u, count, timing) for u in stage.units(plan)]
    assert results == [Squared(0, 0), Squared(1, 1), Squared(2, 4)]
    assert stage.calls == [0, 1, 2]
    assert (tmp_path / "part-2.txt").read_text() == "4"
    marker = (tmp_path / "_completions" / "000002.json").read_text()
    assert marker == '{"square": 4, "unit": 2}\n'  # keys sorted, one line
    assert stage.read_marker(plan, 2) == Squared(2, 4)
    assert counts == {"files": 3, "squared": 5}
    # one timing per phase per unit; compute slept 20 ms each
    assert sorted(timings) == ["compute", "read", "write"]
    assert all(len(v) == 3 for v in timings.values())
    assert all(ms >= 19 for ms in timings["compute"])


def test_resume_skips_finished_units_and_counts_them(tmp_path):
    plan = FakePlan(str(tmp_path), 4)
    first = SquareStage()
    for u in first.units(plan):
        first.run(plan, u)
    (tmp_path / "_completions" / "000001.json").unlink()  # as if killed before its marker
    again = SquareStage()
    counts, _, count, timing = _collect()
    resumed = FakePlan(str(tmp_path), 4, resume=True)
    results = [again.run(resumed, u, count, timing) for u in again.units(resumed)]
    assert again.calls == [1]
    assert results == [Squared(u, u * u) for u in range(4)]
    assert counts == {"files_skipped": 3, "files": 1, "squared": 1}
    # without --resume every unit runs again
    third = SquareStage()
    for u in third.units(plan):
        third.run(plan, u)
    assert third.calls == [0, 1, 2, 3]


def test_a_stage_without_markers_never_skips(tmp_path):
    class NoMarkers(SquareStage):
        def markers(self, plan):
            return None

    stage = NoMarkers()
    plan = FakePlan(str(tmp_path), 2, resume=True)
    for _ in range(2):
        for u in stage.units(plan):
            stage.run(plan, u)
    assert stage.calls == [0, 1, 0, 1]
    assert not (tmp_path / "_completions").exists()
    assert stage.read_marker(plan, 0) is None


def test_run_detached_collects_what_run_reports(tmp_path):
    plan = FakePlan(str(tmp_path), 3)
    done = SquareStage().run_detached(plan, 2)
    assert isinstance(done, UnitRun) and done.result == Squared(2, 4)
    assert done.counts == (("squared", 4), ("files", 1))
    assert sorted(done.milliseconds) == ["compute", "read", "write"]
    counts, timings, count, timing = _collect()
    assert done.replay(count, timing) == Squared(2, 4)
    assert counts == {"squared": 4, "files": 1}
    assert timings["compute"] == [done.milliseconds["compute"]]
    # resuming: the finished unit is skipped, unless skip_finished=False
    resumed = FakePlan(str(tmp_path), 3, resume=True)
    stage = SquareStage()
    assert stage.run_detached(resumed, 2).counts == (("files_skipped", 1),)
    assert stage.run_detached(resumed, 2, skip_finished=False).counts[-1] == ("files", 1)
    assert stage.calls == [2]


def test_meter_passes_counts_on_and_times_phases():
    seen: Counter = Counter()
    meter = as_meter(lambda name, n: seen.update({name: n}))
    assert as_meter(meter) is meter
    meter("x", 2)
    with meter.phase("write"):
        time.sleep(0.01)

    def slow():
        time.sleep(0.01)
        yield 1

    assert list(meter.timed("read", slow())) == [1]
    assert seen == {"x": 2}
    ms = meter.milliseconds()
    assert ms["write"] >= 9 and ms["read"] >= 9 and ms["compute"] == 0


@dataclass(frozen=True)
class RootConfig:
    overwrite: bool = False
    resume: bool = False


def test_prepare_root_refuses_to_mix_runs(tmp_path):
    fs = filesystem(str(tmp_path))[0]
    out, record_path = tmp_path / "out", tmp_path / "out" / "_run.json"
    stage = SquareStage()
    record = json.dumps({"a": 1, "b": 2})

    def prepare(config, rec=record):
        folders = (str(out),)
        return stage.prepare_root(fs, config, folders, str(record_path), rec, folders)

    assert prepare(RootConfig()) is False  # empty: fine
    out.mkdir()
    (out / "part-0.txt").write_text("x")
    with pytest.raises(FakeError, match="already holds a square run; pass --resume"):
        prepare(RootConfig())
    with pytest.raises(FakeError, match="holds output without a run record; rerun with"):
        prepare(RootConfig(resume=True))
    record_path.write_text(record)
    (out / "_tmp-half").write_text("half written")
    with pytest.raises(FakeError, match="these differ: b"):
        prepare(RootConfig(resume=True), json.dumps({"a": 1, "b": 3}))
    assert prepare(RootConfig(resume=True)) is True
    assert not (out / "_tmp-half").exists() and (out / "part-0.txt").exists()
    assert prepare(RootConfig(overwrite=True)) is False
    assert not out.exists()
