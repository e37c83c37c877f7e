"""The one Beam wrapper of every stage: a stage runtime's units fanned out over workers.

::

    <list label> (Create: the runtime's elements) -> Spread (Reshuffle) -> <step label>
    (ParDo(UnitFn): each element through StageRuntime.run_element on whichever worker
    gets it)

:class:`StageTransform` is that transform for any
:class:`~tda.attribution.stages.base.StageRuntime`; each stage's module subclasses it
with its labels, its runtime and its result type, and the embed stage replaces the
ParDo by Beam's ``RunInference``. :func:`run_stage` is the driver's side: plan, run the
pipeline to the end, finish (manifest last), read back the counters.

Counters: what a stage counts goes to the Beam namespace ``tda.<stage>``; the seconds
its units spent reading, computing and writing go to ``tda.<stage>.ms`` as milliseconds
(kept apart, so a command's counters stay what they were), and come back as a result's
``timings``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.stages.base import StageRuntime

__all__ = [
    "TIMINGS",
    "StageCounters",
    "StageTransform",
    "UnitFn",
    "beam_counters",
    "build_pipeline",
    "fan_out",
    "run_stage",
    "run_transform",
]

TIMINGS = ".ms"  # a stage's timing counters: namespace tda.<stage>.ms, one per phase


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
) -> tuple[dict[str, int], dict[str, float]]:
    """Apply a stage's root transform, run the pipeline to the end; -> (its counters in
    ``namespace``, the seconds per phase counted in ``namespace + TIMINGS``). ``options``
    are Beam pipeline options, passed through unchanged."""
    pipeline = build_pipeline(label, transform, options, test_pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    timings = beam_counters(result, namespace + TIMINGS)
    return beam_counters(result, namespace), {k: v / 1000 for k, v in timings.items()}


def fan_out(pbegin, items, step, label: str, list_label: str = "ListFiles"):
    """PBegin -> ``step`` applied to each of ``items`` on whichever worker gets it:
    ``list_label`` (Create) -> Spread (Reshuffle, so no worker inherits them all) ->
    ``label`` (``step``: a PTransform, or a DoFn applied with ParDo)."""
    if isinstance(step, beam.DoFn):
        step = beam.ParDo(step)
    return (
        pbegin
        | list_label >> beam.Create(list(items), reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | label >> step
    )


class UnitFn(beam.DoFn):
    """An element of a stage's fan-out -> its output(s), through
    :meth:`StageRuntime.run_element` (finished units skipped on ``--resume``, markers
    written, counters and timings to Beam). ``setup`` runs the runtime's ``setup`` on the
    worker (tokenizers and models are loaded there, never pickled from the driver)."""

    def __init__(self, runtime: StageRuntime, plan: Any) -> None:
        self._runtime = runtime
        self._plan = plan
        namespace = f"tda.{runtime.name}"
        self._count = StageCounters(namespace)
        self._timings = StageCounters(namespace + TIMINGS)

    def setup(self) -> None:
        self._runtime.setup(self._plan)

    def process(self, element) -> Iterator[Any]:
        yield from self._runtime.run_element(self._plan, element, self._count, self._timings)


class StageTransform(beam.PTransform):
    """PBegin -> PCollection of a stage's unit outputs: the runtime's elements fanned out
    (:func:`fan_out`), each run by :class:`UnitFn`.

    A stage subclasses it with: ``runtime`` (its StageRuntime class), ``root_label`` (the
    label its pipeline applies it under), ``list_label`` / ``step_label`` (its two named
    steps) and
    ``result`` (its result type, built from (output of finish, counters, timings)).
    """

    runtime: ClassVar[type[StageRuntime]] = StageRuntime
    root_label: ClassVar[str] = "Stage"
    list_label: ClassVar[str] = "ListFiles"
    step_label: ClassVar[str] = "ProcessUnits"
    result: ClassVar[Callable] = tuple

    def __init__(self, plan: Any, runtime: StageRuntime | None = None) -> None:
        super().__init__()
        self._plan = plan
        self._runtime = runtime or self.runtime()

    def step(self) -> beam.PTransform:
        """What runs one element on a worker (a ParDo of :class:`UnitFn`)."""
        return beam.ParDo(UnitFn(self._runtime, self._plan))

    def expand(self, pbegin):
        elements = self._runtime.elements(self._plan)
        return fan_out(pbegin, elements, self.step(), self.step_label, self.list_label)


def run_stage(
    transform: type[StageTransform],
    config,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
    on_planned: Callable | None = None,
):
    """Plan (driver), run the stage's pipeline to the end, finish (driver: the manifest,
    written last); ``on_planned(runtime, plan)`` is called between planning and the
    pipeline. Returns ``transform.result(finished, counters, timings)``."""
    runtime = transform.runtime()
    plan = runtime.plan(config)
    if on_planned is not None:
        on_planned(runtime, plan)
    counters, timings = run_transform(
        transform.root_label,
        transform(plan, runtime),
        f"tda.{runtime.name}",
        options,
        test_pipeline,
    )
    runtime.sweep_temp_files()  # what workers lost mid-write left (their units were rerun)
    return transform.result(runtime.finish(plan), counters, timings)
