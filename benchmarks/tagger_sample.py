"""Random matches of concept taggers with their context, to label by hand (docs/model.md).

    .venv/bin/python benchmarks/tagger_sample.py CORPUS_DIR CONCEPT[,CONCEPT...] K SEED

Prints, per concept, its number of matches in the corpus and K random ones (seeded), the
match in brackets with 40 characters before and 30 after.
"""

import glob
import random
import sys

from tda.attribution.corpus.readers import Document, iter_documents, resolve_inputs
from tda.attribution.encoders.builtin.concepts import load_concept_set
from tda.schemas import ReadOptions

cs = load_concept_set()
corpus_dir, want, K, seed = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
files = resolve_inputs(sorted(glob.glob(f"{corpus_dir}/*")), "auto")
idx = [cs.names.index(w) for w in want]
matches = {w: [] for w in want}
for f in files:
    for d in iter_documents(f, ReadOptions()):
        if not isinstance(d, Document):
            continue
        sp = cs.spans(d.text)
        for w, i in zip(want, idx, strict=True):
            for s, e in sp[i]:
                matches[w].append((d.source, d.text, s, e))
rng = random.Random(seed)
for w in want:
    pick = rng.sample(matches[w], min(K, len(matches[w])))
    print(f"## {w} ({len(matches[w])})")
    for j, (src, t, s, e) in enumerate(pick):
        print(
            j,
            src[:4],
            (t[max(0, s - 40) : s] + "[" + t[s:e] + "]" + t[e : e + 30]).replace("\n", " "),
        )
