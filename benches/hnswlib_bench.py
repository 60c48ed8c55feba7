#!/usr/bin/env python3
"""Peer benchmark: hnswlib (cosine, M=16, efConstruction=200) and an exact numpy scan.

Every query is timed on its own, single-threaded, after 100 warm-up queries.
"""
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # single-threaded BLAS for the exact scan; must precede numpy

import argparse
import json
import time

import hnswlib
import numpy as np

EF_SWEEP = [16, 24, 32, 48, 64, 96, 128, 256]
WARMUP = 100


def time_queries(search, queries):
    """Run search(q) on each query vector (shape [1, d]); return (ids [Q, k], latencies ns)."""
    for i in range(min(WARMUP, len(queries))):
        search(queries[i:i + 1])
    ids, lat = [], np.empty(len(queries), dtype=np.int64)
    for i in range(len(queries)):
        q = queries[i:i + 1]
        t0 = time.perf_counter_ns()
        ids.append(search(q))
        lat[i] = time.perf_counter_ns() - t0
    return np.vstack(ids), lat


def summarise(ids, lat, gt, k):
    ids = ids.astype(np.int64)  # hnswlib returns uint64 labels
    hits = sum(len(np.intersect1d(row, truth)) for row, truth in zip(ids, gt[:, :k]))
    return {
        "p50_ms": float(np.percentile(lat, 50)) / 1e6,
        "p99_ms": float(np.percentile(lat, 99)) / 1e6,
        "qps": len(lat) / (lat.sum() / 1e9),
        "recall_at_k": hits / (len(gt) * k),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--ground-truth", required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", required=True, help="output JSON path")
    ap.add_argument("--build-threads", type=int, default=1)
    args = ap.parse_args()

    base = np.load(args.base)
    queries = np.load(args.queries)
    gt = np.load(args.ground_truth)
    n, dims = base.shape
    k = args.k

    # Cosine, as hnswlib's space and the ground truth: on unit vectors (a plain dot product of
    # the raw vectors ranked by magnitude too).
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)

    def exact(q):
        scores = ((q / np.linalg.norm(q)) @ unit.T)[0]
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top])]

    exact_res = summarise(*time_queries(exact, queries), gt, k)

    index = hnswlib.Index(space="cosine", dim=dims)
    index.init_index(max_elements=n, M=16, ef_construction=200, random_seed=100)
    index.set_num_threads(args.build_threads)
    t0 = time.perf_counter()
    index.add_items(base, np.arange(n))
    build_s = time.perf_counter() - t0
    index.set_num_threads(1)

    runs = []
    for ef in EF_SWEEP:
        index.set_ef(ef)
        res = summarise(*time_queries(lambda q: index.knn_query(q, k=k)[0][0], queries), gt, k)
        runs.append({"setting": f"ef={ef}", **res})

    report = {
        "engine": "hnswlib",
        "dataset": {"n": n, "dims": dims, "queries": len(queries)},
        "k": k,
        "build_threads": args.build_threads,
        "build_s": build_s,
        "exact": exact_res,
        "runs": runs,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)

    print(f"hnswlib M=16 efC=200: n={n} dims={dims} queries={len(queries)} k={k} "
          f"build {build_s:.1f}s ({args.build_threads} thread(s))")
    print(f"{'setting':<10} {'p50_ms':>8} {'p99_ms':>8} {'qps':>9} {'recall@' + str(k):>10}")
    for r in [{"setting": "exact", **exact_res}] + runs:
        print(f"{r['setting']:<10} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['qps']:9.0f} "
              f"{r['recall_at_k']:10.4f}")


if __name__ == "__main__":
    main()
