"""The generic stage transform (pipeline/common.py) and the embed stage's Beam
ModelHandler, with fake stages and a fake model where the model does not matter."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tda.attribution.io.fs import filesystem
from tda.attribution.stages.base import Meter, StageRuntime
from tda.attribution.stages.embed import EmbedStage
from tda.pipeline.common import StageTransform, run_stage
from tda.pipeline.embed import EmbedModelHandler
from tda.schemas import EmbedCounts


@dataclass(frozen=True)
class Tripled:
    unit: int
    value: int

    def to_dict(self) -> dict:
        return {"unit": self.unit, "value": self.value}

    @classmethod
    def from_dict(cls, data: dict) -> Tripled:
        return cls(**data)


@dataclass(frozen=True)
class TriplePlan:
    out: str
    n: int
    resume: bool = False


class TripleStage(StageRuntime[TriplePlan, int, Tripled]):
    """Plans from a dict config; unit k writes part-k.txt and yields 3k."""

    name = "triple"
    record = Tripled

    def plan(self, config: dict) -> TriplePlan:
        Path(config["out"]).mkdir(parents=True, exist_ok=True)
        return TriplePlan(config["out"], config["n"], config.get("resume", False))

    def units(self, plan: TriplePlan) -> list[int]:
        return list(range(plan.n))

    def markers(self, plan: TriplePlan):
        return filesystem(plan.out)[0], f"{plan.out}/_done"

    def marker(self, plan: TriplePlan, unit: int) -> str:
        return f"{plan.out}/_done/{unit:03d}.json"

    def resuming(self, plan: TriplePlan) -> bool:
        return plan.resume

    def process(self, plan: TriplePlan, unit: int, meter: Meter) -> Tripled:
        with meter.phase("write"):
            Path(plan.out, f"part-{unit}.txt").write_text(str(3 * unit))
        meter("tripled", 3 * unit)
        return Tripled(unit, 3 * unit)

    def finish(self, plan: TriplePlan) -> list[Tripled]:
        return [self.read_marker(plan, u) for u in self.units(plan)]


@dataclass(frozen=True)
class TripleResult:
    finished: list
    counters: dict
    timings: dict = field(default_factory=dict)


class TripleUnits(StageTransform):
    runtime = TripleStage
    root_label = "TripleUnits"
    list_label = "ListUnits"
    step_label = "TripleEach"
    result = TripleResult


def test_stage_transform_runs_every_unit_through_the_runtime(tmp_path):
    plan = TripleStage().plan({"out": str(tmp_path), "n": 4})
    with BeamTestPipeline() as p:
        out = p | TripleUnits(plan)
        assert_that(out, equal_to([Tripled(u, 3 * u) for u in range(4)]))
    assert sorted(p.name for p in (tmp_path / "_done").iterdir()) == [
        "000.json", "001.json", "002.json", "003.json",
    ]  # fmt: skip
    assert (tmp_path / "part-3.txt").read_text() == "9"


def test_stage_transform_labels_its_steps(tmp_path):
    plan = TripleStage().plan({"out": str(tmp_path), "n": 2})
    p = beam.Pipeline()
    _ = p | "TripleUnits" >> TripleUnits(plan)
    labels = set(p.to_runner_api().components.transforms[t].unique_name
                 for t in p.to_runner_api().components.transforms)  # fmt: skip
    assert {"TripleUnits/ListUnits", "TripleUnits/Spread", "TripleUnits/TripleEach"} <= labels


def test_run_stage_counts_resumes_and_times(tmp_path):
    config = {"out": str(tmp_path), "n": 3}
    first = run_stage(TripleUnits, config)
    assert first.finished == [Tripled(u, 3 * u) for u in range(3)]
    assert first.counters == {"files": 3, "tripled": 9}
    assert set(first.timings) == {"read", "compute", "write"}
    assert all(s >= 0 for s in first.timings.values())
    (tmp_path / "_done" / "001.json").unlink()
    again = run_stage(TripleUnits, {**config, "resume": True})
    assert again.counters == {"files": 1, "files_skipped": 2, "tripled": 3}
    assert again.finished == first.finished


# --------------------------------------------------------------------------------------
# The embed stage's ModelHandler, with a fake model: an EmbedStage whose work is a count.


@dataclass(frozen=True)
class FakeEmbedConfig:
    root: str
    device: str = "cpu"
    resume: bool = False


@dataclass(frozen=True)
class FakeEncoderInfo:
    fingerprint: str = "sha256:" + "f" * 64
    hidden_size: int = 128


@dataclass(frozen=True)
class FakeEmbedPlan:
    config: FakeEmbedConfig
    encoder: FakeEncoderInfo = FakeEncoderInfo()


class CountingStage(EmbedStage):
    """An embed stage whose 'model' embeds file k into k + 1 chunks without reading or
    writing anything but its marker."""

    def setup(self, plan) -> None:
        self.encoder = "fake"

    def process(self, plan, unit: int, meter: Meter) -> EmbedCounts:
        meter("chunks_embedded", unit + 1)
        return EmbedCounts(file_index=unit, chunks=unit + 1, tokens=64 * (unit + 1))


class FakeHandler(EmbedModelHandler):
    def load_model(self) -> CountingStage:
        stage = CountingStage()
        stage.setup(self._plan)
        return stage


def _expected(files):
    return [EmbedCounts(file_index=i, chunks=i + 1, tokens=64 * (i + 1)) for i in files]


def test_model_handler_is_a_beam_model_handler(tmp_path):
    plan = FakeEmbedPlan(FakeEmbedConfig(str(tmp_path)))
    handler = FakeHandler(plan)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 1}
    assert not handler.share_model_across_processes()  # a builtin-sized model
    wide = FakeEmbedPlan(plan.config, FakeEncoderInfo(hidden_size=4096))
    assert FakeHandler(wide).share_model_across_processes()  # an 8B-sized one
    assert FakeHandler(plan, large_model=True).share_model_across_processes()
    model = handler.load_model()
    assert list(handler.run_inference([2, 0], model)) == _expected([2, 0])
    marker = tmp_path / "embeddings" / "_completions" / "000002.json"
    assert EmbedCounts.from_dict(json.loads(marker.read_text())) == _expected([2])[0]


def test_run_inference_embeds_each_file_and_resumes(tmp_path):
    plan = FakeEmbedPlan(FakeEmbedConfig(str(tmp_path)))
    with BeamTestPipeline() as p:
        out = p | beam.Create([0, 1, 2]) | RunInference(FakeHandler(plan))
        assert_that(out, equal_to(_expected([0, 1, 2])))
    # resume: finished files are read back from their markers, not embedded again
    (tmp_path / "embeddings" / "_completions" / "000001.json").unlink()
    resumed = FakeEmbedPlan(FakeEmbedConfig(str(tmp_path), resume=True))
    with BeamTestPipeline() as p:
        out = p | beam.Create([0, 1, 2]) | RunInference(FakeHandler(resumed))
        assert_that(out, equal_to(_expected([0, 1, 2])))


def test_large_model_is_shared_across_processes_and_gives_the_same_results(tmp_path):
    """share_model_across_processes: the model lives in one process (Beam's
    MultiProcessShared proxy); results and markers come back the same."""
    plan = FakeEmbedPlan(FakeEmbedConfig(str(tmp_path)))
    handler = FakeHandler(plan, large_model=True)
    with BeamTestPipeline() as p:
        out = (
            p
            | beam.Create([0, 1, 2])
            | RunInference(handler, model_identifier=f"tda-test-{tmp_path.name}")
        )
        assert_that(out, equal_to(_expected([0, 1, 2])))
    assert len(list((tmp_path / "embeddings" / "_completions").iterdir())) == 3
