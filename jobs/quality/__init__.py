"""The quality harness (``make eval`` / ``tda eval``): planted facts, a model trained on
them, every tda option and baseline ranking the training chunks behind what the model
says, and counterfactual retraining; the tables docs/quality.md publishes. One module per
step, in the order :func:`main` runs them:

* :mod:`.facts`: step 1, the planted facts, their prompts per condition, the corpus;
  :mod:`.passages`: the stored passages, and the long outputs cut from them once the
  chunks are cut (long output, near duplicate: scored per output chunk);
* :mod:`.commands`: the ``tda`` commands run as subprocesses (train, chunk, embed, index,
  prune), with pinned threads;
* :mod:`.outputs`: step 2, what the trained model reproduces (:class:`Query`, one scored
  output), every condition's outputs and what each asked, and the answer's
  log-probability;
* :mod:`.variants`: step 3, the tda representations under test, their build roots, and
  the channel rows on the default one;
* :mod:`.chunks`: the chunk table every method ranks, with each fact's and each passage
  output chunk's sources;
* :mod:`.rankers`: step 4's methods behind one :class:`Ranker` protocol (an output, or
  each chunk of a long output; tda, hybrids, BM25, exact span, random);
  :mod:`.gradients`: Grad-Cos and TRAK;
* :mod:`.scoring`: step 4's typed results (an item's rank, a method's metrics and row, the
  tda options and the paired bootstrap, the default's confidence precision);
* :mod:`.counterfactual`: step 5, retraining without each method's top chunks;
* :mod:`.report`: step 6, the report, quality.json, quality.md (ending with the
  default's targets) and the console table;
* :mod:`.harness`: the command line and :func:`main`, the steps in order.
"""

from .harness import Options, main
from .rankers import Ranker

__all__ = ["Options", "Ranker", "main"]
