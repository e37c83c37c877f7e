"""The model's own evidence (``--rerank evidence``): a candidate holding the output's tokens
in the same context scores 1; the score is the kNN-LM-style late interaction the module
defines, checked against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tda.attribution.encoders import load_encoder
from tda.attribution.evidence import evidence_scores


@pytest.fixture(scope="module")
def encoder(builtin_dir):
    return load_encoder("builtin:" + builtin_dir, "cpu")


def _states(encoder, ids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        acts = encoder.forward(torch.from_numpy(ids[None]).to(encoder.device))
    return acts.hidden[0].float().numpy()


def test_a_copy_scores_one_and_others_less(encoder, real_docs):
    tokenizer = encoder.load_tokenizer()
    texts = [t for _, t in real_docs[:6]]
    docs = [e.ids[:64] for e in tokenizer.encode_batch(texts)]
    out = docs[0]
    states = _states(encoder, out)[:-1]  # position t predicts token t + 1
    targets = out[1:]
    scores = evidence_scores(encoder, states, targets, docs)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert all(s < scores[0] - 0.05 for s in scores[1:])
    # the definition, computed directly for one candidate
    cand = docs[3]
    h = _states(encoder, cand)[:-1]
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    q = states / np.linalg.norm(states, axis=1, keepdims=True)
    per_token = []
    for i, y in enumerate(targets):
        js = np.flatnonzero(cand[1:] == y)
        per_token.append(float((q[i] @ h[js].T).max()) if len(js) else 0.0)
    assert scores[3] == pytest.approx(np.mean(per_token), abs=1e-5)


def test_edge_cases(encoder):
    states = np.ones((3, 8), dtype=np.float32)  # never compared: no candidate predicts
    assert evidence_scores(encoder, states[:0], np.zeros(0, np.int64), [np.arange(5)]).tolist() == [
        0.0
    ]
    assert evidence_scores(encoder, states, np.array([1, 2, 3]), []).shape == (0,)
    # a one-token candidate predicts nothing
    assert evidence_scores(encoder, states, np.array([1, 2, 3]), [np.array([7])]).tolist() == [0.0]
