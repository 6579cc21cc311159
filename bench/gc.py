"""Times ``ducc gc`` on a repository of many small images, 10 % of them superseded (see gc.sh).

Every image is real: an OCI image with two gzip'ed tar layers (one of a few shared base layers, one top
layer of its own), pushed to a real registry with ducc's own client and converted by ``ducc sync``.
Superseding pushes a new image (a new top layer) under a tag and syncs again, so that the old flat
root and the old top layer are left unreferenced.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from ducc.model.reference import Reference  # noqa: E402
from ducc.registry.client import RegistryClient  # noqa: E402
from tests.support.images import Dir, File, ImageSpec, Layer, build, push_built  # noqa: E402

REPOSITORIES = 20
BASES = 5


def spec(i: int, generation: int) -> ImageSpec:
    base = Layer([Dir("etc"), File("etc/os-release", f"ID=bench-base-{i % BASES}\n".encode()),
                  Dir("usr"), File("usr/lib.so", bytes([i % BASES]) * 20_000)])
    top = Layer([Dir("app"), File("app/version", f"image {i} generation {generation}\n".encode()),
                 File("app/data", os.urandom(2_000))])
    return ImageSpec(layers=[base, top], cmd=["/app/version"])


def ref_of(registry: str, i: int) -> Reference:
    return Reference.parse(f"{registry}/bench/gc{i % REPOSITORIES}:t{i}")


def push_all(client: RegistryClient, registry: str, indices: list[int], generation: int) -> None:
    def push(i: int) -> None:
        push_built(client, ref_of(registry, i), build(spec(i, generation)))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(push, indices))


def ducc(*args: str) -> tuple[float, str]:
    env = {**os.environ, "DUCC_CACHE_DIR": "off"}
    env.pop("DUCC_GC_GRACE", None)
    started = time.perf_counter()
    done = subprocess.run([str(HERE / ".venv/bin/ducc"), "-q", *args], env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ducc {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return took, done.stdout


def summary(out: str) -> str:
    return out.strip().splitlines()[-1]


def trees(root: Path, top: str) -> int:
    base = root / top
    return sum(1 for shard in base.iterdir() if shard.is_dir() for t in shard.iterdir() if t.is_dir())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--superseded", type=float, default=0.10)
    args = parser.parse_args()
    client = RegistryClient()
    root = args.work / "gc-root"
    subprocess.run(["rm", "-rf", str(root)], check=True)
    everything = list(range(args.images))
    started = time.perf_counter()
    push_all(client, args.registry, everything, 1)
    print(f"pushed {args.images} images (2 layers each, {BASES} shared bases) in {time.perf_counter() - started:.1f}s")
    wishlist = args.work / "gc-wishlist.yaml"
    wishlist.write_text("version: 1\ninput:\n" + "".join(f"  - '{ref_of(args.registry, i)}'\n" for i in everything))
    took, out = ducc("sync", str(wishlist), "--root", str(root))
    print(f"converted them with ducc sync in {took:.1f}s  [{out.strip()}]")
    print(f"repository: {trees(root, '.flat')} flat roots, {trees(root, '.layers')} layers")

    first, out = ducc("gc", "--root", str(root))
    print(f"gc, nothing to delete, first run (measures every tree once): {first:.2f}s  [{summary(out)}]")
    again, out = ducc("gc", "--root", str(root))
    print(f"gc, nothing to delete: {again:.2f}s  [{summary(out)}]")

    moved = everything[:: max(1, round(1 / args.superseded))][: round(args.images * args.superseded)]
    push_all(client, args.registry, moved, 2)
    took, out = ducc("sync", str(wishlist), "--root", str(root))
    print(f"superseded {len(moved)} tags (new top layer each), synced in {took:.1f}s  [{out.strip()}]")
    waiting, out = ducc("gc", "--root", str(root))
    counted = re.search(r"(\d+) waiting", summary(out))
    print(f"gc, default grace (7d), nothing deleted yet: {waiting:.2f}s  [{counted.group(0) if counted else '?'}"
          "]")
    dry, out = ducc("gc", "--root", str(root), "--grace", "0", "--dry-run")
    print(f"gc --grace 0 --dry-run: {dry:.2f}s  [{summary(out)}]")
    deleting, out = ducc("gc", "--root", str(root), "--grace", "0")
    print(f"gc --grace 0, deleting: {deleting:.2f}s  [{summary(out)}]")
    flats, layers = trees(root, ".flat"), trees(root, ".layers")
    exact = flats == args.images and layers == args.images + BASES
    print(f"after: {flats} flat roots, {layers} layers: exactly the current images' trees: {'YES' if exact else 'NO'}")
    subprocess.run(["rm", "-rf", str(root)], check=True)


if __name__ == "__main__":
    main()
