"""Helpers every stage's pipeline shares: Beam counters by name, and reading them back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

__all__ = [
    "Stage",
    "StageCounters",
    "beam_counters",
    "build_pipeline",
    "fan_out",
    "run_stage",
    "run_transform",
]


class StageCounters:
    """``counters(name, n)``: increment the Beam counter ``namespace/name`` (created lazily
    on the worker, so the object pickles empty)."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._counters: dict[str, object] = {}

    def __getstate__(self):
        return {"_namespace": self._namespace, "_counters": {}}

    def __call__(self, name: str, n: int) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter(self._namespace, name)
        counter.inc(n)


def beam_counters(result, namespace: str) -> dict[str, int]:
    """A finished pipeline's counters in ``namespace`` (committed, else attempted)."""
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except (NotImplementedError, AttributeError):  # runners without metrics support
        return {}
    out: dict[str, int] = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))


def build_pipeline(
    label: str,
    transform: beam.PTransform,
    options: PipelineOptions | None,
    test_pipeline: beam.Pipeline | None = None,
    runner=None,
) -> beam.Pipeline:
    """A pipeline with a stage's root transform applied, not yet run. ``runner`` (a name
    or instance) overrides the options' runner for construction only: translating a
    Dataflow pipeline to its portable proto must not contact Google Cloud."""
    pipeline = test_pipeline or beam.Pipeline(runner=runner, options=options or PipelineOptions([]))
    _ = pipeline | label >> transform
    return pipeline


def run_transform(
    label: str,
    transform: beam.PTransform,
    namespace: str,
    options: PipelineOptions | None,
    test_pipeline: beam.Pipeline | None,
) -> dict[str, int]:
    """Apply a stage's root transform, run the pipeline to the end, return its counters.
    ``options`` are Beam pipeline options, passed through unchanged."""
    pipeline = build_pipeline(label, transform, options, test_pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    return beam_counters(result, namespace)


@dataclass(frozen=True)
class Stage:
    """How the driver runs one stage: plan (driver) -> transform (Beam) -> finish (driver).

    units: plan -> how many work items (files or shards) the pipeline processes;
    markers: BuildRoot -> the folder holding one completion marker per finished item;
    result: the stage's result class, built from (manifest, counters).
    """

    name: str
    label: str
    namespace: str
    plan: Callable
    transform: Callable
    finish: Callable
    units: Callable
    markers: Callable
    result: type


def run_stage(
    stage: Stage,
    config,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
    on_planned: Callable | None = None,
):
    """Plan, run the stage's pipeline to the end, write its manifest; ``on_planned(plan)``
    is called between planning and the pipeline. Returns ``stage.result``."""
    plan = stage.plan(config)
    if on_planned is not None:
        on_planned(plan)
    counters = run_transform(
        stage.label, stage.transform(plan), stage.namespace, options, test_pipeline
    )
    return stage.result(manifest=stage.finish(plan), counters=counters)


def fan_out(pbegin, items, fn: beam.DoFn, label: str, list_label: str = "ListFiles"):
    """PBegin -> ``fn`` applied to each of ``items`` on whichever worker gets it:
    ``list_label`` (Create) -> Spread (Reshuffle, so no worker inherits them all) ->
    ``label`` (ParDo)."""
    return (
        pbegin
        | list_label >> beam.Create(list(items), reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | label >> beam.ParDo(fn)
    )
