"""The progress display of `tda build`: bars fed by completion markers as they appear."""

from __future__ import annotations

import io
import time

import fsspec
from rich.console import Console

from tda.jobs.progress import BuildDisplay, count_markers


def test_counts_markers_as_workers_write_them(tmp_path):
    fs = fsspec.filesystem("file")
    markers = tmp_path / "_completions"
    assert count_markers(fs, str(markers)) == 0  # not there yet
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with BuildDisplay(console) as display:
        display.start("embed", 3, fs, str(markers))
        markers.mkdir()
        for n in range(2):
            (markers / f"{n:06d}.json").write_text("{}")
        (markers / "_tmp-000002.json.partial").write_text("")  # not a marker
        deadline = time.monotonic() + 5
        task = display._progress.tasks[0]
        while task.completed < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert task.completed == 2 and task.total == 3
        display.done("embed", None, 1.0)
        assert task.completed == 3
    assert "embed" in out.getvalue() and "3/3" in out.getvalue()


def test_plain_lines_when_not_a_terminal(tmp_path, capsys):
    fs = fsspec.filesystem("file")
    console = Console(file=io.StringIO(), force_terminal=False)
    with BuildDisplay(console) as display:
        display.start("index", 1, fs, str(tmp_path))
        display.done("index", None, 2.5)
    err = capsys.readouterr().err
    assert "tda build: index: 1 shard planned" in err and "index: done in 2.5 s" in err
