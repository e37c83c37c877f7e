"""Peak memory of ``tda chunk`` against the size of one record: is it bounded per record?

    .venv/bin/python benchmarks/bench_record_memory.py [--out build/bench-record-memory]
        [--sizes 1 5 16] [--tokenizer build/demo/model]

Each case is one JSONL file chunked by the real CLI (``tda chunk FILE --out ROOT
--tokenizer SPEC``, default ``--max-doc-bytes`` 16 MiB, DirectRunner in-process) in a
fresh process, whose peak RSS (``VmHWM``) it prints at exit:

* ``small``: 50 short documents (the floor: imports, tokenizer, Beam, Parquet writer);
* ``record-N``: one record whose JSONL line is exactly N MiB, real text (Python's
  documentation topics, repeated);
* ``cjk-N``: one N MiB record (the middle size) of CJK characters in short space- and
  punctuation-separated runs: a vocabulary learned on English falls back to bytes, one
  token per byte, the most tokens a byte-level tokenizer can make of a record;
* ``too-large``: one 20 MiB line, over the limit: dead-lettered from its first 16 MiB
  without being kept;
* ``many-small``: 16 MiB of short records, where the tokenizer batches (``BATCH_CHARS``)
  set the memory, not any one record.

It reports each peak, its excess over ``small``, that excess per MiB of the record, and
the record's tokens.
The tokenizer defaults to the demo model's (``make demo`` writes it); without it, a
byte-level BPE (vocabulary 2,048) is trained here on the same topics.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20

# The child runs the CLI's own entry point, then reports its peak RSS. VmHWM, not
# ru_maxrss: Linux carries ru_maxrss over from the forked parent across exec.
CHILD = """
import sys
from tda.jobs.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print("PEAK_KB", peak)
"""


def topics_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(text for _, text in sorted(topics.items()))


def record_line(text: str, size: int) -> bytes:
    """One JSONL line (with its newline) of exactly ``size`` bytes, text cut from the
    topics repeated."""
    head = b'{"id": "big", "text": "'
    body = json.dumps(text)[1:-1].encode()
    room = size - len(head) - len(b'"}\n')
    body = (body * (room // len(body) + 1))[:room]
    while body.endswith(b"\\") and not body.endswith(b"\\\\"):  # never cut an escape
        body = body[:-1] + b" "
    line = head + body + b'"}\n'
    json.loads(line)  # a valid record, or the benchmark is wrong
    return line


def cjk_line(size: int) -> bytes:
    """One JSONL line (with its newline) of ``size`` bytes or just under: words of 2-12
    CJK characters (3 UTF-8 bytes each) separated by spaces or CJK punctuation."""
    rng = random.Random(0)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    head, words, used = b'{"text": "', [], 0
    room = size - len(head) - len(b'"}\n')
    while True:
        word = "".join(rng.choice(chars) for _ in range(rng.randint(2, 12)))
        word += rng.choice(" 。， ")
        if used + len(word.encode()) > room:
            break
        words.append(word)
        used += len(word.encode())
    return head + "".join(words).encode() + b'"}\n'


def write_corpora(folder: Path, sizes: list[int]) -> dict[str, Path]:
    from pydoc_data.topics import topics

    folder.mkdir(parents=True, exist_ok=True)
    text = topics_text()
    items = sorted(topics.items())
    corpora = {}
    path = corpora["small"] = folder / "small.jsonl"
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in items[:50]))
    for size in sizes:
        path = corpora[f"record-{size}"] = folder / f"record-{size}.jsonl"
        path.write_bytes(record_line(text, size * MIB))
    middle = sorted(sizes)[len(sizes) // 2]
    path = corpora[f"cjk-{middle}"] = folder / f"cjk-{middle}.jsonl"
    path.write_bytes(cjk_line(middle * MIB))
    path = corpora["too-large"] = folder / "too-large.jsonl"
    path.write_bytes(record_line(text, 20 * MIB))
    path = corpora["many-small"] = folder / "many-small.jsonl"
    with path.open("w") as f:
        written, n = 0, 0
        while written < 16 * MIB:
            k, v = items[n % len(items)]
            line = json.dumps({"id": f"{n}-{k}", "text": v}) + "\n"
            f.write(line)
            written, n = written + len(line), n + 1
    return corpora


def tokenizer_spec(out: Path, given: str | None) -> str:
    if given:
        return given
    demo = REPO / "build" / "demo" / "model"
    if (demo / "tokenizer.json").exists():
        return str(demo)
    from tda.attribution.corpus.tokenizer import train_bpe_tokenizer

    folder = out / "tokenizer"
    if not (folder / "tokenizer.json").exists():
        train_bpe_tokenizer(iter([topics_text()]), 2048, str(folder))
    return str(folder)


def run_chunk(corpus: Path, root: Path, tokenizer: str) -> dict:
    args = [str(corpus), "--out", str(root), "--tokenizer", tokenizer, "--overwrite", "--json"]
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "chunk", *args], check=True, capture_output=True, text=True
    )
    seconds = time.time() - started
    peak_kb = next(
        int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_KB")
    )
    summary = json.loads(done.stdout[: done.stdout.index("PEAK_KB")])
    shutil.rmtree(root, ignore_errors=True)
    return {
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "seconds": round(seconds, 1),
        "totals": summary["totals"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "build" / "bench-record-memory"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 16], help="MiB")
    parser.add_argument("--tokenizer", default=None, help="SPEC (default: the demo model's)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    tokenizer = tokenizer_spec(out, args.tokenizer)
    corpora = write_corpora(out / "corpus", args.sizes)
    rows = []
    for case, corpus in corpora.items():
        row = {"case": case, "file_mb": round(corpus.stat().st_size / MIB, 2)}
        row |= run_chunk(corpus, out / f"root-{case}", tokenizer)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["peak_rss_mb"]
    print(
        f"\n{'case':<12} {'file MiB':>9} {'tokens':>10} {'peak MB':>9} {'over small':>11} "
        f"{'per MiB':>8}"
    )
    for row in rows:
        extra = row["peak_rss_mb"] - base
        row["over_small_mb"] = round(extra, 1)
        one_record = row["case"].startswith(("record", "cjk"))
        per = f"{extra / row['file_mb']:.1f}" if one_record else ""
        row["over_small_per_mib"] = float(per) if per else None
        print(
            f"{row['case']:<12} {row['file_mb']:>9.2f} {row['totals']['tokens']:>10,} "
            f"{row['peak_rss_mb']:>9.1f} {extra:>11.1f} {per:>8}"
        )
    (out / "record-memory.json").write_text(
        json.dumps({"tokenizer": tokenizer, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
