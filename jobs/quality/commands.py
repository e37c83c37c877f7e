"""How the harness runs tda: the real ``tda`` commands as subprocesses (``python -m
tda.jobs.cli``), with pinned thread counts, ``jobs`` at a time."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Tda", "Training", "parallel"]


@dataclass(frozen=True)
class Training:
    """The builtin model's training options (``tda model train``): every model the harness
    trains, the original and each counterfactual, uses the same."""

    steps: int
    seed: int
    lr: float
    max_seq: int
    # a tokenizer to train with (``--tokenizer``: a counterfactual keeps the original
    # model's); None: each training learns its own on its corpus
    tokenizer: str | None = None


@dataclass(frozen=True)
class Tda:
    """Runs ``tda`` commands with ``threads`` OpenMP / MKL threads each (the harness pins
    the count: float reductions, and so the trained weights, depend on it; on a shared
    2-core machine 1 thread per process also avoids spinning OpenMP barriers, which made
    a 2-thread training run 2.2x slower than a 1-thread one here)."""

    threads: int
    training: Training

    def run(self, *args: str) -> None:
        """``tda ARGS...``, its command line echoed (``$ tda.jobs.cli ...``), its output
        discarded; a failure raises ``CalledProcessError``."""
        cmd = [sys.executable, "-m", "tda.jobs.cli", *args]
        print("$ " + " ".join(cmd[2:]), flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads)}  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)

    def train(self, corpus: Path, model: Path) -> None:
        """``tda model train`` on the folder ``corpus`` into ``model``."""
        t = self.training
        self.run("model", "train", str(corpus), "--out", str(model), "--steps", str(t.steps),
                 "--seed", str(t.seed), "--lr", str(t.lr), "--max-seq", str(t.max_seq),
                 *(("--tokenizer", t.tokenizer) if t.tokenizer else ()))  # fmt: skip


def parallel(jobs: int, tasks: list[Callable[[], object]]) -> list:
    """Call every task (a no-argument callable running subprocesses) ``jobs`` at a time;
    their results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(lambda task: task(), tasks))
