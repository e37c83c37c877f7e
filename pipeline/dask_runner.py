"""Beam's Dask runner, fit for tda's stages: what ``--runner DaskRunner`` runs.

Beam's ``DaskRunner`` (``apache_beam.runners.dask``) turns a pipeline into ``dask.bag``
operations on a dask.distributed cluster: ``Create`` becomes a bag's partitions, each
ParDo a function over one partition (a "bundle"), and the scheduler hands the partitions
to worker processes and reruns the ones a lost worker held. Three of its choices do not
fit work units as coarse as tda's (one input file each), so this subclass changes them
and nothing else:

1. Outputs of ``finish_bundle`` are kept. Beam's runner collects a bundle's outputs
   before calling ``finish_bundle``, so whatever a DoFn emits there is dropped;
   ``RunInference``'s ``BatchElements`` emits its last batch there, which on Dask loses
   the last file of every partition (with one file per partition: every file).
2. One partition per element by default (``--dask_partition_size 1``) instead of 128:
   with 128 a corpus of fewer files is one partition, one task, run by one worker.
3. A DoFn is set up once per worker thread, not once per partition: the set-up DoFn goes
   back to a per-process pool after its bundle and the next partition of the same step
   takes it (Beam's SDK harness reuses DoFns the same way). Tokenizers and models are
   therefore loaded once per worker process, however many files it gets.

Counters: each bundle runs under a Beam metrics container, and its counter values go to
the scheduler as a dask event (one topic per pipeline run); the driver sums them into the
result's ``metrics()`` as *attempted* values (a partition rerun after a worker loss counts
twice, as Beam's attempted metrics may). The result closes the driver's Dask client when
the job ends (Beam's leaves it open). Nothing here runs unless the Dask runner is picked.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import typing as t
import uuid

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics.execution import MetricKey, MetricResult, MetricsContainer
from apache_beam.metrics.metric import MetricResults
from apache_beam.metrics.metricbase import MetricName
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import transform_evaluator as evaluator
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.utils import counters as beam_counters

__all__ = ["DaskJobResult", "DaskRunner"]

# Set-up DoFns kept per worker process for the most recent steps (a long-lived cluster
# runs many jobs: older steps' DoFns are torn down and dropped).
_POOL_STEPS = 16
# The driver's one round trip after a job (its counters): a reply that never comes
# (seen once in CI-like runs on a loaded machine: the call waited forever with the
# scheduler idle) is retried on a new connection instead of hanging the command.
EVENTS_TIMEOUT_S = 30.0
EVENTS_ATTEMPTS = 3


class _DoFnPool:
    """Per worker process: step token -> idle (invoker, receivers) pairs, set up once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: collections.OrderedDict[str, list] = collections.OrderedDict()

    def take(self, token: str):
        with self._lock:
            idle = self._idle.get(token)
            return idle.pop() if idle else None

    def give(self, token: str, entry) -> None:
        evicted = []
        with self._lock:
            self._idle.setdefault(token, []).append(entry)
            self._idle.move_to_end(token)
            while len(self._idle) > _POOL_STEPS:
                evicted.extend(self._idle.popitem(last=False)[1])
        for invoker, _ in evicted:
            invoker.invoke_teardown()


_POOL = _DoFnPool()


def _run_bundle(items, token, step, topic, invoker_args, invoker_kwargs, receivers):
    """One dask partition through one ParDo -> its outputs (list of values).

    items: the partition's windowed values; token: the applied ParDo of this run (pool
    key); step: its label (metrics); topic: the dask event topic for its counters.
    """
    entry = _POOL.take(token)
    if entry is None:
        invoker = DoFnInvoker.create_invoker(*invoker_args, **invoker_kwargs)
        invoker.invoke_setup()
        entry = (invoker, receivers)
    invoker, receivers = entry
    container = MetricsContainer(step)
    sampler = statesampler.StateSampler("", beam_counters.CounterFactory())
    previous = statesampler.get_current_tracker()
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(step, "process", metrics_container=container):
            invoker.invoke_start_bundle()
            for item in items:
                invoker.invoke_process(item)
            invoker.invoke_finish_bundle()  # before collecting: it may emit (BatchElements)
    except BaseException:
        invoker.invoke_teardown()  # not returned to the pool: its state is unknown
        raise
    finally:
        statesampler.set_current_tracker(previous)
    results = [v.value for v in receivers.values]
    receivers.values.clear()
    _POOL.give(token, entry)
    _report(topic, step, container)
    return results


def _report(topic: str, step: str, container: MetricsContainer) -> None:
    """Send a bundle's counters to the scheduler (a dask event), if it counted any."""
    counted = [
        [key.metric.namespace, key.metric.name, int(value)]
        for key, value in container.get_cumulative().counters.items()
        if value
    ]
    if counted:
        from distributed import get_worker

        get_worker().log_event(topic, {"step": step, "counters": counted})


class _ParDo(evaluator.ParDo):
    """Beam's ParDo translation with :func:`_run_bundle` as the partition function."""

    def __init__(self, applied, bag_kwargs=None, topic: str = "") -> None:
        super().__init__(applied, bag_kwargs or {})
        self.topic = topic

    def apply(self, input_bag, side_inputs=None):
        transform = t.cast(beam.ParDo, self.transform)
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = getattr(getattr(main_input, "windowing", None), "windowfn", None)
        receivers = evaluator.OneReceiver()
        invoker_args = [
            DoFnSignature(transform.fn),
            _OutputHandler(
                window_fn=window_fn,
                main_receivers=receivers[None],
                tagged_receivers=receivers,
                per_element_output_counter=None,
                output_batch_converter=None,
                process_yields_batches=False,
                process_batch_yields_elements=False,
            ),
        ]
        invoker_kwargs = dict(
            context=DoFnContext(transform.label, state=None),
            side_inputs=side_inputs,
            input_args=list(args),
            input_kwargs=kwargs,
            user_state_context=None,
            bundle_finalizer_param=beam.DoFn.BundleFinalizerParam(),
        )
        token = uuid.uuid4().hex  # this applied ParDo in this run: its DoFn pool key
        return input_bag.map(evaluator.get_windowed_value, window_fn).map_partitions(
            _run_bundle,
            token,
            self.applied.full_label,
            self.topic,
            invoker_args,
            invoker_kwargs,
            receivers,
        )


class _Counters(MetricResults):
    """A finished Dask job's counters (attempted only), for ``result.metrics()``."""

    def __init__(self, values: dict[MetricKey, int]) -> None:
        self._values = values

    def query(self, filter=None):
        counters = [
            MetricResult(key, None, value)
            for key, value in self._values.items()
            if self.matches(filter, key)
        ]
        return {"counters": counters, "distributions": [], "gauges": [], "string_sets": []}


@dataclasses.dataclass
class DaskJobResult(beam_dask.DaskRunnerResult):
    """Beam's Dask result that gathers the job's counters and closes its client when it
    ends (done or failed)."""

    topic: str = ""
    _counters: dict = dataclasses.field(default_factory=dict)

    def wait_until_finish(self, duration=None) -> str:
        try:
            state = super().wait_until_finish(duration)
            totals: dict[MetricKey, int] = collections.defaultdict(int)
            for _, event in job_events(self.client, self.topic):
                for namespace, name, value in event["counters"]:
                    totals[MetricKey(event["step"], MetricName(namespace, name))] += value
            self._counters = dict(totals)
            return state
        finally:
            self.client.close()

    def metrics(self) -> MetricResults:
        return _Counters(self._counters)


def job_events(client, topic: str, timeout: float = EVENTS_TIMEOUT_S,
               attempts: int = EVENTS_ATTEMPTS) -> list:  # fmt: skip
    """The scheduler's events of ``topic`` ([(time, msg)], as ``Client.get_events``),
    each attempt bounded by ``timeout`` seconds; the pooled connection a timed-out call
    held is dropped, so the next attempt opens another. Raises ``TimeoutError`` (one
    line) after ``attempts``."""
    for _ in range(attempts):
        try:
            return client.sync(client.scheduler.events, topic=topic, callback_timeout=timeout)
        except TimeoutError:
            continue
    raise TimeoutError(
        f"the Dask scheduler at {client.scheduler.address} did not return the job's "
        f"counters in {attempts} tries of {timeout:.0f} s"
    )


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner with the three changes of this module's docstring. Options:
    Beam's ``DaskOptions`` (``--dask_client_address``, ``--dask_partition_size``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self._topic = ""

    def to_dask_bag_visitor(self, bag_kwargs=None) -> PipelineVisitor:
        """Beam's visitor (the pipeline's leaf transforms -> dask bags, in order) with
        :class:`_ParDo` for ParDo and one element per partition unless sized."""
        bag_kwargs = dict(bag_kwargs or {}) or {"partition_size": 1}
        translations = {**evaluator.TRANSLATIONS, beam.ParDo: _ParDo}
        topic = self._topic

        class Visitor(PipelineVisitor):
            def __init__(self) -> None:
                self.bags: dict = collections.OrderedDict()

            def visit_transform(self, node) -> None:
                op_class = translations.get(node.transform.__class__, evaluator.NoOp)
                op = (
                    _ParDo(node, bag_kwargs, topic)
                    if op_class is _ParDo
                    else op_class(node, bag_kwargs=bag_kwargs)
                )
                kwargs: dict = {"input_bag": None, "side_inputs": None}
                if node.inputs:
                    bags = []
                    for value in node.inputs:
                        if isinstance(value, pvalue.PBegin):
                            bags.append(None)
                        if value.producer in self.bags:
                            bags.append(self.bags[value.producer])
                    one = len(bags) == 1 and not isinstance(op, evaluator.Flatten)
                    kwargs["input_bag"] = bags[0] if one else bags
                if node.side_inputs:
                    kwargs["side_inputs"] = [
                        SideInputMap(
                            type(si),
                            si._view_options(),
                            evaluator.DaskBagWindowedIterator(
                                self.bags.get(si.pvalue.producer), si._window_mapping_fn
                            ),
                        )
                        for si in node.side_inputs
                    ]
                self.bags[node] = op.apply(**kwargs)

        return Visitor()

    def run_pipeline(self, pipeline, options) -> DaskJobResult:
        self._topic = f"tda-beam-counters-{uuid.uuid4().hex}"
        result = super().run_pipeline(pipeline, options)
        return DaskJobResult(result.client, result.futures, topic=self._topic)
