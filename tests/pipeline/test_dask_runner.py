"""The Dask runner's driver side against a real scheduler (in this process, no workers):
the one round trip after a job, for its counters, never hangs the command."""

from __future__ import annotations

import asyncio

import pytest

distributed = pytest.importorskip("distributed")

from tda.pipeline.dask_runner import job_events  # noqa: E402


@pytest.fixture
def cluster():
    with (
        distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        yield cluster.scheduler, client


def test_a_reply_that_never_comes_is_retried_on_a_new_connection(cluster):
    scheduler, client = cluster
    client.log_event("job-1", {"step": "Embed", "counters": [["tda", "chunks", 3]]})
    real = scheduler.handlers["events"]
    calls = []

    async def first_call_hangs(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(3600)
        return real(*args, **kwargs)

    scheduler.handlers["events"] = first_call_hangs
    events = job_events(client, "job-1", timeout=1.0)
    assert len(calls) == 2
    assert [msg["counters"] for _, msg in events] == [[["tda", "chunks", 3]]]


def test_a_scheduler_that_never_answers_is_one_line(cluster):
    scheduler, client = cluster

    async def hangs(*args, **kwargs):
        await asyncio.sleep(3600)

    scheduler.handlers["events"] = hangs
    with pytest.raises(TimeoutError, match=r"did not return the job's counters in 2 tries"):
        job_events(client, "job-1", timeout=0.5, attempts=2)
