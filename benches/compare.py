#!/usr/bin/env python3
"""Run `quiver bench` and the hnswlib peer bench back to back on the same files, then report,
for each target recall, the fastest setting of each engine that reaches it and the ratio of
quiver's p50 to hnswlib's (and to exact search's, measured in each run).

  python benches/compare.py --data /work/data/minilm50k [--quiver target/release/quiver] [--index arroy,hannoy]
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

TARGETS = (0.95, 0.99)


def fastest(runs, target):
    ok = [r for r in runs if r["recall_at_k"] >= target and r["setting"] != "exact"]
    return min(ok, key=lambda r: r["p50_ms"]) if ok else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="directory with base.npy, queries.npy, gt.npy")
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--index", default="arroy")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    d = args.data
    files = ["--base", str(d / "base.npy"), "--queries", str(d / "queries.npy"), "--ground-truth", str(d / "gt.npy")]
    subprocess.run([args.quiver, "bench", *files, "--distance", "cosine", "-k", str(args.k),
                    "--index", args.index, "--json", str(d / "quiver.json")], check=True)
    subprocess.run([sys.executable, str(Path(__file__).with_name("hnswlib_bench.py")), *files,
                    "--k", str(args.k), "--json", str(d / "hnswlib.json")], check=True)
    quiver = json.loads((d / "quiver.json").read_text())
    peer = json.loads((d / "hnswlib.json").read_text())
    print(f"\nexact scan p50: quiver {quiver['exact']['p50_ms']:.3f} ms, numpy {peer['exact']['p50_ms']:.3f} ms "
          f"(ratio {quiver['exact']['p50_ms'] / peer['exact']['p50_ms']:.2f})")
    for target in TARGETS:
        q, h = fastest(quiver["runs"], target), fastest(peer["runs"], target)
        if not q or not h:
            print(f"recall@{args.k} >= {target}: quiver {q and q['setting']}, hnswlib {h and h['setting']} (one did not reach it)")
            continue
        print(f"recall@{args.k} >= {target}: quiver {q['setting']} {q['p50_ms']:.3f} ms (recall {q['recall_at_k']:.4f}, "
              f"{q['p50_ms'] / quiver['exact']['p50_ms']:.3f} x exact) | hnswlib {h['setting']} {h['p50_ms']:.3f} ms "
              f"(recall {h['recall_at_k']:.4f}) | quiver / hnswlib = {q['p50_ms'] / h['p50_ms']:.2f}")


if __name__ == "__main__":
    main()
