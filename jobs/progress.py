"""The progress display of ``tda build``: one bar per stage, on stderr.

Progress is read from the stages' completion markers (one small file per finished input
file or index shard, written by whichever worker finished it), so the same display works
on the DirectRunner and on remote runners whose build root is a gs:// or s3:// URL.
"""

from __future__ import annotations

import sys
import threading

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tda.pipeline.build import BuildProgress

__all__ = ["BuildDisplay", "count_markers"]

_UNITS = {"chunk": "files", "embed": "files", "index": "shards"}


def count_markers(fs, folder: str) -> int:
    """Finished work items: ``*.json`` markers in ``folder`` (0 while it does not exist)."""
    try:
        return sum(1 for p in fs.ls(folder, detail=False) if p.endswith(".json"))
    except (FileNotFoundError, OSError):
        return 0


class BuildDisplay(BuildProgress):
    """A rich progress bar per stage, updated by polling the stage's markers folder
    (every 0.5 s locally, every 5 s on object stores)."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description:<6}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            console=self._console,
            transient=False,
            disable=not self._console.is_terminal,
        )
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._task = None

    def __enter__(self) -> BuildDisplay:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._halt()
        self._progress.__exit__(*exc)

    def start(self, stage: str, units: int, fs, markers: str) -> None:
        self._halt()
        unit = _UNITS.get(stage, "items")
        if not self._console.is_terminal:
            named = unit if units != 1 else unit[:-1]
            print(f"tda build: {stage}: {units:,} {named} planned", file=sys.stderr, flush=True)
        self._task = self._progress.add_task(stage, total=units, unit=unit)
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        interval = 0.5 if local else 5.0
        self._stop = threading.Event()

        def poll(task=self._task, stop=self._stop) -> None:
            while not stop.wait(interval):
                self._progress.update(task, completed=min(units, count_markers(fs, markers)))

        self._poller = threading.Thread(target=poll, name=f"tda-{stage}-progress", daemon=True)
        self._poller.start()

    def done(self, stage: str, result, seconds: float) -> None:
        self._halt()
        task = self._task
        if task is not None:
            self._progress.update(task, completed=self._progress.tasks[task].total)
        if not self._console.is_terminal:
            print(f"tda build: {stage}: done in {seconds:.1f} s", file=sys.stderr, flush=True)

    def _halt(self) -> None:
        if self._poller is not None:
            self._stop.set()
            self._poller.join()
            self._poller = None
