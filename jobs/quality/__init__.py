"""The quality harness (``make eval`` / ``tda eval``): planted facts, a model trained on
them, every tda option and baseline ranking the training chunks behind what the model
says, and counterfactual retraining; the tables docs/quality.md publishes. One module per
step, in the order :func:`main` runs them:

* :mod:`.facts`: step 1, the planted facts, their prompts per condition, the corpus;
* :mod:`.commands`: the ``tda`` commands run as subprocesses (train, chunk, embed, index,
  prune), with pinned threads;
* :mod:`.outputs`: step 2, what the trained model reproduces (:class:`Query`, one scored
  output), and the answer's log-probability;
* :mod:`.variants`: step 3, the tda representations under test and their build roots;
* :mod:`.chunks`: the chunk table every method ranks, with each fact's sources;
* :mod:`.rankers`: step 4's methods behind one :class:`Ranker` protocol (tda, hybrids,
  BM25, exact span, random); :mod:`.gradients`: Grad-Cos and TRAK;
* :mod:`.scoring`: step 4's typed results (a fact's rank, a method's metrics and row, the
  tda options and the paired bootstrap);
* :mod:`.counterfactual`: step 5, retraining without each method's top chunks;
* :mod:`.report`: step 6, the report, quality.json, quality.md and the console table;
* :mod:`.harness`: the command line and :func:`main`, the steps in order.
"""

from .harness import Options, main
from .rankers import Ranker

__all__ = ["Options", "Ranker", "main"]
