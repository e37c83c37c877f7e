"""The counterfactual check (issue 24): unlearning an output's own source on a copy of the
model lowers the output's log-probability more than unlearning random chunks; the
original weights are never written; same inputs, same figures; the report carries the
check and reads back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tda.attribution.attributor import Attributor
from tda.attribution.check import (
    CheckError,
    ChunkSampler,
    ModelCopy,
    _basis,
    _loss_gradient,
    _mean_loss,
    significance,
    unlearn,
)
from tda.attribution.encoders import load_encoder
from tda.attribution.index.channels import OpenedChannels
from tda.pipeline.index import run_index
from tda.schemas import (
    AttributionReport,
    CheckSettings,
    ConfigError,
    EmbedConfig,
    IndexConfig,
    Pooling,
)
from tests.helpers import chunk_root, embed_root

FAST = CheckSettings(steps=2, draws=4, seed=3)


@pytest.fixture(scope="module")
def root(tmp_path_factory, docs_jsonl, builtin_dir) -> Path:
    root = tmp_path_factory.mktemp("check") / "root"
    chunk_root(root, [docs_jsonl], builtin_dir)
    embed_root(EmbedConfig(root=str(root), model=builtin_dir, pooling=Pooling.parse("max:hidden")))
    run_index(IndexConfig(root=str(root), shards=2))
    return root


@pytest.fixture(scope="module")
def attributor(root) -> Attributor:
    return Attributor.from_root(str(root), device="cpu")


@pytest.fixture(scope="module")
def verbatim(docs_jsonl) -> tuple[str, str]:
    """(prompt, output): a training document's opening and the 40 words after it."""
    text = json.loads(Path(docs_jsonl).read_text().splitlines()[3])["text"]
    words = text.split(" ")
    return " ".join(words[:30]), " " + " ".join(words[30:70])


def _weights(attributor: Attributor) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in attributor.encoder.model.state_dict().items()}


def test_check_finds_the_source_and_leaves_the_model_alone(attributor, verbatim):
    before = _weights(attributor)
    report = attributor.attribute(*verbatim, k=5, input_attribution="none", check=FAST)
    after = attributor.encoder.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # never written
    assert report.check is not None and report.check.steps == 2 and report.check.seconds > 0
    first = report.chunks[0].check
    assert first is not None and first.chunks == len(report.chunks[0].hits) == 5
    assert len(first.random_drops) == 4 and first.bm25_drop is not None
    assert len(first.bm25_chunk_ids) == 5
    # the hits hold the output's own text: unlearning them costs it more than any random set
    assert first.attributed_drop > max(first.random_drops), first
    assert first.verdict == "supported" and first.p_value == pytest.approx(1 / 5)
    # the log-probability before is the report's own (same model, same tokens)
    assert first.log_prob == pytest.approx(report.chunks[0].totals.log_prob, abs=1e-3)


def test_check_is_deterministic_and_reads_back(attributor, verbatim):
    report = attributor.attribute(*verbatim, k=3, input_attribution="none")
    assert report.check is None and "check" not in report.to_dict()
    one, two = attributor.check(report, FAST), attributor.check(report, FAST)
    strip = {"seconds": 0.0}
    assert replace(one, check=replace(one.check, **strip)) == replace(
        two, check=replace(two.check, **strip)
    )
    read = AttributionReport.from_json(one.to_json())
    assert read.schema_version == 4 and read.chunks == one.chunks and read.check == one.check
    assert read.output_token_ids == report.output_token_ids
    assert len(report.output_token_ids) == report.output_token_count
    # another seed draws other random chunks (and, with --control, other control chunks)
    other = attributor.check(report, replace(FAST, seed=4))
    assert other.chunks[0].check.random_drops != one.chunks[0].check.random_drops
    base, other = (attributor.check(report, replace(FAST, seed=s, control=0)) for s in (3, 4))
    assert other.chunks[0].check.random_drops != base.chunks[0].check.random_drops
    assert other.chunks[0].check.attributed_drop == base.chunks[0].check.attributed_drop


def test_check_refuses_a_report_of_another_index(attributor, verbatim):
    report = attributor.attribute(*verbatim, k=2, input_attribution="none")
    with pytest.raises(CheckError, match="index manifest"):
        attributor.check(replace(report, index_manifest_id="0" * 64), FAST)
    with pytest.raises(CheckError, match=rf"records {report.output_token_count} token ids"):
        attributor.check(replace(report, output_token_count=report.output_token_count + 1))
    with pytest.raises(CheckError, match="tokenizes"):  # a report without its ids
        old = replace(report, output_token_ids=())
        attributor.check(replace(old, output_token_count=report.output_token_count + 1))


def spelled(tokenizer, text: str) -> tuple[int, ...]:
    """``text``'s tokens one character at a time: they decode to ``text``, which tokenizes
    to fewer tokens (a BPE merges the characters of its common words), as a generated
    output's text may tokenize to other tokens than the model wrote."""
    ids = tuple(int(i) for c in text for i in tokenizer.encode_batch([c])[0].ids)
    assert tokenizer.decode(list(ids)) == text
    assert len(tokenizer.encode_batch([text])[0].ids) < len(ids)
    return ids


def test_check_of_a_report_reruns_the_tokens_attributed(attributor, verbatim):
    """A report whose output text does not tokenize back to its tokens is checked from its
    JSON on the tokens it records, with the figures ``attribute(check=...)`` gives; a
    report without them (written before they were recorded) is refused in one line."""
    prompt, output = verbatim
    ids = spelled(attributor.tokenizer, output[:48])
    checked = attributor.attribute(prompt, ids, k=3, input_attribution="none", check=FAST)
    assert checked.output_token_ids == ids and checked.output == output[:48]
    plain = replace(checked, chunks=tuple(replace(c, check=None) for c in checked.chunks),
                    check=None)  # fmt: skip
    read = AttributionReport.from_json(plain.to_json())
    assert read.output_token_ids == ids and json.loads(plain.to_json())["output_token_ids"]
    again = attributor.check(read, FAST)
    assert [c.check for c in again.chunks] == [c.check for c in checked.chunks]
    assert all(c.check is not None and c.check.chunks == 3 for c in again.chunks)
    assert replace(again.check, seconds=0.0) == replace(checked.check, seconds=0.0)
    # a report written before output_token_ids reads with none, and its text no longer
    # places the chunks
    old = json.loads(plain.to_json())
    del old["output_token_ids"]
    old = AttributionReport.from_dict(old)
    assert old.output_token_ids == ()
    with pytest.raises(CheckError) as refused:
        attributor.check(old, FAST)
    message = str(refused.value)
    assert f"the report's output is {len(ids)} tokens, its text tokenizes to" in message
    assert "\n" not in message


def test_check_settings_refuse_bad_values():
    with pytest.raises(ConfigError, match=r"--draws must be in 2\.\.256, got 1"):
        CheckSettings(draws=1)
    with pytest.raises(ConfigError, match="--lr must be in"):
        CheckSettings(lr=0.0)
    with pytest.raises(ConfigError, match="--scope must be one of all, last"):
        CheckSettings(scope="half")


def test_significance_by_hand():
    z, p = significance(3.0, [1.0, 2.0, 3.0, 0.0])
    assert z == pytest.approx((3.0 - 1.5) / np.std([1, 2, 3, 0], ddof=1))
    assert p == pytest.approx(2 / 5)  # one draw reaches 3.0: (1 + 1) / (1 + 4)
    assert significance(1.0, [0.5, 0.5]) == (None, pytest.approx(1 / 3))


@pytest.mark.parametrize("scope", ["all", "last"])
def test_unlearning_moves_only_the_copy(model_spec, scope):
    encoder = load_encoder(model_spec, "cpu")
    original = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    copy = ModelCopy(encoder, scope)
    total = sum(1 for _ in encoder.model.parameters())
    assert 0 < len(copy.params) <= total and (len(copy.params) < total) == (scope == "last")
    ids = np.arange(5, 69, dtype=np.int64)
    before = copy.chunk_log_probs(ids, [(32, 64)])
    unlearn(copy, [ids[32:64]], steps=2, lr=0.01)
    after = copy.chunk_log_probs(ids, [(32, 64)])
    assert after[0] < before[0]  # ascent on these tokens makes them less likely
    assert all(torch.equal(original[k], v) for k, v in encoder.model.state_dict().items())
    copy.reset()
    assert copy.chunk_log_probs(ids, [(32, 64)])[0] == pytest.approx(before[0], abs=1e-4)


def test_projection_keeps_what_a_kept_copy_teaches(model_spec):
    """The project method: unlearning a chunk while an exact twin of it stays in the corpus
    changes nothing (retraining would learn it from the twin); while an unrelated chunk
    stays, the chunk is unlearned."""
    encoder = load_encoder(model_spec, "cpu")
    copy = ModelCopy(encoder, "all")
    ids = np.arange(5, 69, dtype=np.int64)
    seq = ids[32:64]
    before = copy.chunk_log_probs(ids, [(32, 64)])[0]
    twin = _loss_gradient(copy, [seq.copy()])[0]
    unlearn(copy, [seq], steps=2, lr=0.01, retain=twin)
    assert copy.chunk_log_probs(ids, [(32, 64)])[0] == pytest.approx(before, abs=1e-6)
    copy.reset()
    other = _loss_gradient(copy, [np.arange(200, 232, dtype=np.int64)])[0]
    unlearn(copy, [seq], steps=2, lr=0.01, retain=other)
    assert copy.chunk_log_probs(ids, [(32, 64)])[0] < before - 0.1


def test_check_by_projection(attributor, verbatim):
    """--method project runs on a report like ascent, is recorded, and still finds that
    unlearning an output's own source costs it more than random chunks do."""
    settings = replace(FAST, method="project")
    report = attributor.attribute(*verbatim, k=5, input_attribution="none", check=settings)
    assert report.check.method == "project"
    first = report.chunks[0].check
    assert first.attributed_drop > max(first.random_drops), first
    plain = attributor.check(replace(report, check=None), FAST).chunks[0].check
    assert plain.attributed_drop != first.attributed_drop  # the projection changed the step
    choices = "ascent, project, forget, unique"
    with pytest.raises(ConfigError, match=f"--method must be one of {choices}"):
        CheckSettings(method="retrain")


def test_unique_unlearning_keeps_what_a_neighbour_teaches(model_spec):
    """The unique method: with a twin of the chunk among its kept neighbours, unlearning
    it changes nothing (the step is the share of the gradient that is the chunk's own:
    none); with an unrelated neighbour, the chunk is unlearned, and no further than plain
    ascent takes it."""
    encoder = load_encoder(model_spec, "cpu")
    copy = ModelCopy(encoder, "all")
    ids = np.arange(5, 69, dtype=np.int64)
    seq = ids[32:64]
    before = copy.chunk_log_probs(ids, [(32, 64)])[0]
    twin = _basis(copy, [seq.copy()])
    q = twin[0] @ twin[1]  # (P, 1): the twin's gradient, unit length
    assert q.shape[1] == 1 and float(q.norm()) == pytest.approx(1.0, abs=1e-9)
    unlearn(copy, [seq], steps=2, lr=0.01, basis=twin)
    assert copy.chunk_log_probs(ids, [(32, 64)])[0] == pytest.approx(before, abs=1e-3)
    repeated = [np.arange(200, 232, dtype=np.int64), np.arange(300, 340)] * 2
    other = _basis(copy, repeated)  # a direction given twice counts once
    q = other[0] @ other[1]
    assert q.shape[1] == 2 and torch.allclose(q.T @ q, torch.eye(2, dtype=q.dtype), atol=1e-9)
    copy.reset()
    unlearn(copy, [seq], steps=2, lr=0.01, basis=other)
    unique = copy.chunk_log_probs(ids, [(32, 64)])[0]
    copy.reset()
    unlearn(copy, [seq], steps=2, lr=0.01)
    assert copy.chunk_log_probs(ids, [(32, 64)])[0] - 1e-6 <= unique < before - 0.1


def test_check_by_unique_unlearning(attributor, verbatim):
    """--method unique runs on a report, is recorded, and still finds that unlearning an
    output's own source costs it more than random chunks do; an index without a lexical
    channel is refused with one line."""
    settings = replace(FAST, method="unique")
    report = attributor.attribute(*verbatim, k=5, input_attribution="none", check=settings)
    assert report.check.method == "unique"
    first = report.chunks[0].check
    assert first.attributed_drop > max(first.random_drops), first
    assert attributor.check(replace(report, check=None), settings).chunks[0].check == first
    plain = attributor.check(replace(report, check=None), FAST).chunks[0].check
    assert plain.attributed_drop != first.attributed_drop
    channels = attributor.reader.channels
    try:  # an index built without its lexical channel (an older index has none)
        attributor.reader.channels = OpenedChannels(channels.span, None)
        with pytest.raises(CheckError, match="has no lexical channel: the unique method"):
            attributor.check(replace(report, check=None), settings)
    finally:
        attributor.reader.channels = channels


def test_forgetting_stops_at_the_level_asked_for(model_spec):
    """unlearn(until=L) stops as soon as the set's loss reaches L: none at a level it is
    already above, and at a level above it the loss ends at or above it within the cap,
    with the steps it took reported."""
    encoder = load_encoder(model_spec, "cpu")
    copy = ModelCopy(encoder, "all")
    seq = np.arange(5, 69, dtype=np.int64)
    loss = _mean_loss(copy, [seq])
    assert _loss_gradient(copy, [seq])[1] == pytest.approx(loss, rel=1e-5)
    assert unlearn(copy, [seq], steps=20, lr=0.01, until=loss - 0.5) == 0
    assert _mean_loss(copy, [seq]) == pytest.approx(loss, abs=1e-6)
    taken = unlearn(copy, [seq], steps=20, lr=0.01, until=loss + 0.3)
    assert 0 < taken < 20
    assert _mean_loss(copy, [seq]) >= loss + 0.3


def test_check_by_forgetting(attributor, verbatim):
    """--method forget unlearns each set until its loss reaches that of random training
    text: the output's own source (memorised, low loss) is unlearned and costs the output
    more than any random set, which the model never singled out."""
    settings = replace(FAST, method="forget", steps=20)
    report = attributor.attribute(*verbatim, k=5, input_attribution="none", check=settings)
    assert report.check.method == "forget"
    first = report.chunks[0].check
    assert first.attributed_drop > 0 and first.attributed_drop > max(first.random_drops), first
    again = attributor.check(replace(report, check=None), settings).chunks[0].check
    assert again == first


def test_control_chunks_are_seeded_random_and_never_hits(attributor):
    """The validation's control text (check_validation --control N): N random training
    chunks, none of them a hit, the same for the same seed."""
    from tda.attribution.check import CheckTarget, _controls

    reader = attributor.reader

    def tokens(texts):
        return [np.asarray(e.ids, dtype=np.int64) for e in attributor.tokenizer.encode_batch(texts)]

    first = ChunkSampler(reader).draw(np.random.default_rng([0, 7]))[0]
    targets = [CheckTarget(0, 4, (first,), "")]
    a = _controls(reader, targets, 6, 0, tokens)
    b = _controls(reader, targets, 6, 0, tokens)
    assert len(a) == 6 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    hit = tokens([reader.lookup.get(first).text])[0]
    assert not any(np.array_equal(x, hit) for x in a)
    assert _controls(reader, targets, 0, 0, tokens) == []


def test_control_takes_the_set_s_general_damage_off_and_old_reports_read_without_it(
    attributor, verbatim
):
    """--control N measures each set's damage on N random chunks and takes it off the
    drops (so the figures differ from --control 0); a report checked before the control
    existed reads back as checked without it."""
    report = attributor.attribute(*verbatim, k=5, input_attribution="none",
                                  check=replace(FAST, control=4))  # fmt: skip
    assert report.check.control == 4
    plain = attributor.check(replace(report, check=None), replace(FAST, control=0))
    assert plain.check.control == 0
    a, b = report.chunks[0].check, plain.chunks[0].check
    assert a.attributed_drop != b.attributed_drop and a.random_drops != b.random_drops
    data = json.loads(report.to_json())
    del data["check"]["control"]
    assert AttributionReport.from_dict(data).check.control == 0
    with pytest.raises(ConfigError, match=r"--control must be in 0\.\.256"):
        CheckSettings(control=300)
