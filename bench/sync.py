"""Times ``ducc sync`` over a large wishlist when nothing changed and when one tag moved (see sync.sh)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from ducc.model import mediatypes  # noqa: E402
from ducc.model.reference import Reference  # noqa: E402
from ducc.registry.client import RegistryClient  # noqa: E402

REPOSITORIES = 6


def publish_many(client: RegistryClient, registry: str, entries: int) -> list[str]:
    """Tag the real base and python images under ``entries`` names spread over a few repositories."""
    sources = {}
    for tag in ("base", "python"):
        ref = Reference.parse(f"{registry}/bench/debian:{tag}")
        manifest = client.get_manifest(ref)
        sources[tag] = manifest
    names = []
    for r in range(REPOSITORIES):
        repo = f"bench/sync{r}"
        for manifest in sources.values():
            for digest in [manifest.config.digest] + [layer.digest for layer in manifest.layers]:  # type: ignore[union-attr]
                target = Reference.parse(f"{registry}/{repo}:x")
                if not client.blob_exists(target, digest) and not client.mount_blob(target, digest, "bench/debian"):
                    raise SystemExit(f"cannot mount {digest} into {repo}")
    for i in range(entries):
        repo = f"bench/sync{i % REPOSITORIES}"
        tag = f"v{i}"
        manifest = sources["base" if i % 2 == 0 else "python"]
        ref = Reference.parse(f"{registry}/{repo}:{tag}")
        client.push_manifest(ref, manifest.raw, manifest.media_type or mediatypes.OCI_MANIFEST)
        names.append(str(ref))
    return names


def ducc_sync(wishlist: Path, root: Path) -> tuple[float, str]:
    env = {**os.environ, "DUCC_CACHE_DIR": "off"}
    started = time.perf_counter()
    done = subprocess.run([str(HERE / ".venv/bin/ducc"), "-q", "sync", str(wishlist), "--root", str(root)],
                          env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ducc sync failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return took, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--entries", type=int, default=600)
    args = parser.parse_args()
    client = RegistryClient()
    names = publish_many(client, args.registry, args.entries)
    wishlist = args.work / "sync-wishlist.yaml"
    wishlist.write_text("version: 1\ninput:\n" + "".join(f"  - '{n}'\n" for n in names))
    root = args.work / "sync-root"
    subprocess.run(["rm", "-rf", str(root)], check=True)
    first, summary = ducc_sync(wishlist, root)
    print(f"first sync (every entry published, {args.entries} entries, 2 distinct images): {first:.1f}s  [{summary}]")
    unchanged, summary = ducc_sync(wishlist, root)
    print(f"sync when nothing changed: {unchanged:.2f}s  [{summary}]   target <= 30 s   "
          f"{'MET' if unchanged <= 30 and f'{args.entries} unchanged' in summary else 'MISSED'}")
    moved = Reference.parse(names[0])  # a base tag becomes python
    python = client.get_manifest(Reference.parse(f"{args.registry}/bench/debian:python"))
    client.push_manifest(moved, python.raw, python.media_type)
    after, summary = ducc_sync(wishlist, root)
    counts = dict((state, int(n)) for n, state in re.findall(r"(\d+) (published|unchanged)", summary))
    exact = counts.get("published") == 1 and counts.get("unchanged") == args.entries - 1
    target = (root / moved.registry / f"{moved.repository}:{moved.tag}").resolve()
    print(f"sync after one tag moved: {after:.2f}s  [{summary}]   exactly that image reconverted: "
          f"{'YES' if exact and (target / 'usr/bin/python3').exists() else 'NO'}")
    subprocess.run(["rm", "-rf", str(root)], check=True)


if __name__ == "__main__":
    main()
