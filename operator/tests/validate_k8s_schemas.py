#!/usr/bin/env python3
"""Validates every object the operator renders against the Kubernetes 1.33 JSON schemas.

The rendered objects are the golden files of operator/tests/operator/resources.rs (insta snapshots,
kept equal to the builders' output by `cargo test`), so this needs no Rust build.
Further YAML files given as arguments (e.g. `helm template` output of charts/quiver) are
validated too. Needs PyPI `kubernetes-validate` (pip install kubernetes-validate).
"""

import pathlib
import sys

import kubernetes_validate
import yaml

VERSION = "1.33.0"
SNAPSHOTS = pathlib.Path(__file__).resolve().parent / "operator" / "snapshots"


def documents(snap: pathlib.Path):
    # An insta snapshot is a YAML front matter block between two `---` lines, then the value.
    _, _, body = snap.read_text().split("---\n", 2)
    return [d for d in yaml.safe_load_all(body) if d]


def main() -> int:
    passed = failed = 0
    snaps = sorted(SNAPSHOTS.glob("operator__resources__*.snap"))
    if not snaps:
        print(f"no rendered objects under {SNAPSHOTS}", file=sys.stderr)
        return 1
    sources = [(snap.name, documents(snap)) for snap in snaps]
    for extra in sys.argv[1:]:
        path = pathlib.Path(extra)
        sources.append((path.name, [d for d in yaml.safe_load_all(path.read_text()) if d]))
    for name, objects in sources:
        for obj in objects:
            what = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
            try:
                kubernetes_validate.validate(obj, VERSION, strict=True)
                passed += 1
            except kubernetes_validate.ValidationError as e:
                failed += 1
                print(f"FAIL {what}: {e.message} at {'/'.join(map(str, e.path))}", file=sys.stderr)
            except kubernetes_validate.SchemaNotFoundError as e:
                failed += 1
                print(f"FAIL {what}: no schema ({e})", file=sys.stderr)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
