"""The gradient baselines of step 4, both on the builtin model's last transformer block:
:class:`GradCosRanker` (cosine of count-sketched per-example gradients) and
:class:`TRAKRanker` (dattri's TRAK, optional: :func:`dattri_available`). Each is a
:class:`~tda.jobs.quality.rankers.Ranker`: ``rank_output(prompt, output, k)``, and
``rank_chunks`` for a long output: each output chunk's loss after all the text before it
(the gradient sees what fits in the model's context, as for any output)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from .chunks import ChunkTable

__all__ = ["GradCosRanker", "TRAKRanker", "chunk_pairs", "dattri_available"]


def chunk_pairs(prompt: str, output: str, spans: Sequence[tuple[int, int]]):
    """A long output as the gradient rankers ask it: per output chunk (``spans``: its
    characters in ``output``), (the prompt and the output before it, the chunk's text)."""
    return [(prompt + output[:a], output[a:b]) for a, b in spans]


class _PerChunk:
    """``rank_chunks`` from ``rank_output``: each output chunk's text after the prompt and
    the output before it (:func:`chunk_pairs`)."""

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        raise NotImplementedError

    def rank_chunks(
        self, prompt: str, output: str, spans: Sequence[tuple[int, int]], k: int
    ) -> list[list[int]]:
        return [self.rank_output(p, o, k) for p, o in chunk_pairs(prompt, output, spans)]


class GradCosRanker(_PerChunk):
    """Gradient baseline (Grad-Cos on a layer subset): each chunk is represented by the
    gradient of its own LM loss with respect to the last transformer block's parameters,
    compressed by a seeded count sketch (random sign, random bucket: inner products are
    preserved in expectation, memory O(parameters)); a query by the gradient of the
    output's loss given the prompt. Chunks are ranked by cosine similarity."""

    def __init__(self, table: ChunkTable, encoder, seed: int, width: int = 4096) -> None:
        import torch

        self.table, self.encoder = table, encoder
        model = encoder.model
        self.params = list(model.blocks[-1].parameters())
        size = sum(p.numel() for p in self.params)
        g = torch.Generator().manual_seed(seed)
        self.bucket = torch.randint(0, width, (size,), generator=g)
        self.sign = torch.randint(0, 2, (size,), generator=g).float() * 2 - 1
        self.width = width
        tokenizer = encoder.load_tokenizer()
        sketches = []
        for text in table.texts:
            ids = tokenizer.encode_batch([text])[0].ids.tolist()
            sketches.append(self._sketch(ids, 1))
        self.sketches = torch.stack(sketches)  # (n_chunks, width), unit rows
        self.tokenizer = tokenizer

    def _sketch(self, ids: list[int], start: int):
        """Unit count-sketch of d(mean NLL of ids[start:]) / d(last block params)."""
        import torch

        if len(ids) < 2:
            return torch.zeros(self.width)
        x = torch.tensor([ids[-self.encoder.info.max_window :]])
        start = max(1, start - (len(ids) - x.shape[1]))
        with torch.enable_grad():
            for p in self.params:
                p.requires_grad_(True)
            logits = self.encoder.forward(x, with_logits=True).logits[0, :-1]
            loss = torch.nn.functional.cross_entropy(logits[start - 1 :], x[0, start:])
            grads = torch.autograd.grad(loss, self.params)
            for p in self.params:
                p.requires_grad_(False)
        flat = torch.cat([g.reshape(-1) for g in grads])
        sketch = torch.zeros(self.width).index_add_(0, self.bucket, flat * self.sign)
        return sketch / sketch.norm().clamp_min(1e-12)

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        """The ``k`` chunks whose sketch has the highest cosine with the gradient of
        ``output``'s loss after ``prompt``."""
        import torch

        p = self.tokenizer.encode_batch([prompt])[0].ids.tolist()
        o = self.tokenizer.encode_batch([output])[0].ids.tolist()
        query = self._sketch(p + o, len(p))
        scores = self.sketches @ query
        order = torch.argsort(-scores, stable=True)[:k].tolist()
        return [self.table.ids[i] for i in order]


def dattri_available() -> bool:
    """Whether dattri (TRAK) is importable: ``--gradients auto`` adds TRAK only then."""
    import importlib.util

    return importlib.util.find_spec("dattri") is not None


class TRAKRanker(_PerChunk):
    """Gradient baseline through dattri's TRAK (``dattri.algorithm.trak``, one checkpoint):
    per-example gradients of the mean next-token loss with respect to the last transformer
    block's parameters (``layer_name``), randomly projected to ``proj_dim`` (seeded), then
    score(train, query) = g_query (G^T G + r I)^-1 g_train * (1 - p_train). Sequences are
    right-padded to ``length`` tokens with a loss mask (padding after the last token does
    not change a causal model's earlier positions)."""

    def __init__(
        self,
        table: ChunkTable,
        encoder,
        seed: int,
        proj_dim: int = 512,
        length: int = 72,
        batch_size: int = 32,
    ) -> None:
        import torch
        from dattri.algorithm.trak import TRAKAttributor
        from dattri.task import AttributionTask

        self.table, self.length, self.batch_size = table, length, batch_size
        self.tokenizer = encoder.load_tokenizer()
        # A copy whose parameters require gradients (dattri differentiates only those; the
        # encoder's own are frozen).
        lm = _logits_module(copy.deepcopy(encoder.model).requires_grad_(True)).eval()
        block = len(encoder.model.blocks) - 1
        layer = [n for n, _ in lm.named_parameters() if n.startswith(f"model.blocks.{block}.")]

        def loss(params, data):
            ids, mask = data  # (L,), (L,): mask[t] = 1 where token t is scored
            logits = torch.func.functional_call(lm, params, (ids.unsqueeze(0),))[0, :-1]
            lp = torch.log_softmax(logits, -1).gather(-1, ids[1:].unsqueeze(-1)).squeeze(-1)
            return -(lp * mask[1:]).sum() / mask[1:].sum().clamp_min(1)

        def probability(params, data):
            return torch.exp(-loss(params, data))

        # dattri loads the checkpoint strictly: the pooling statistics (buffers) too
        state = {n: t.detach().clone() for n, t in lm.state_dict().items()}
        task = AttributionTask(loss_func=loss, model=lm, checkpoints=state)
        self.attributor = TRAKAttributor(
            task=task,
            correct_probability_func=probability,
            device="cpu",
            layer_name=layer,
            projector_kwargs={"proj_dim": proj_dim, "proj_seed": seed, "proj_max_batch_size": 32},
            regularization=1e-6,
        )
        packed = [self._pack(self._encode(t), 1) for t in table.texts]
        self.attributor.cache(self._loader(packed))
        self._scored: dict[tuple[str, str], torch.Tensor] = {}  # (prompt, output) -> (n,)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_batch([text])[0].ids.tolist()

    def _pack(self, ids: list[int], start: int):
        import torch

        cut = max(0, len(ids) - self.length)
        ids, start = ids[cut:], max(1, start - cut)
        x = torch.zeros(self.length, dtype=torch.long)
        x[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask = torch.zeros(self.length)
        mask[start : len(ids)] = 1
        return x, mask

    def _loader(self, packed):
        import torch

        data = torch.utils.data.TensorDataset(
            torch.stack([x for x, _ in packed]), torch.stack([m for _, m in packed])
        )
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size, shuffle=False)

    def prepare(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Score every (prompt, output) of ``pairs`` in batches of ``batch_size`` and keep
        the scores, so that :meth:`rank_output` reads them: dattri draws its random
        projection once per test batch (~2 s for the last block), so one call per output
        would spend most of its time there."""
        todo = list(dict.fromkeys(p for p in pairs if p not in self._scored))
        if not todo:
            return
        packed = []
        for prompt, output in todo:
            p, o = self._encode(prompt), self._encode(output)
            packed.append(self._pack(p + o, len(p)))
        scores = self.attributor.attribute(self._loader(packed))  # (n_chunks, len(todo))
        for j, pair in enumerate(todo):
            self._scored[pair] = scores[:, j].clone()

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        """The ``k`` chunks with the highest TRAK score for ``output`` after ``prompt``."""
        import torch

        self.prepare([(prompt, output)])
        order = torch.argsort(-self._scored[(prompt, output)], stable=True)[:k].tolist()
        return [self.table.ids[i] for i in order]


def _logits_module(model):
    """The builtin LM as an ``nn.Module`` whose ``forward(ids (B, T))`` returns logits
    (B, T, V), for ``torch.func.functional_call``."""
    from torch import nn

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model.logits(self.model.hidden(ids))

    return Logits()
