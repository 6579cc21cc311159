"""The real multi-layer Debian images of ``../shared/bench/make-images.sh`` (debootstrap + apt inside),
pushed into a test registry. Built once per machine and kept as an OCI layout under
``$DUCC_BENCH_IMAGES`` (default ``/var/tmp/ducc-bench/images``, shared with ``bench/convert.sh``);
later runs only push the layout."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAKE_IMAGES = REPO.parent / "shared" / "bench" / "make-images.sh"
TAGS = ("base", "python", "edited", "big")


def images_dir() -> Path:
    return Path(os.environ.get("DUCC_BENCH_IMAGES", "/var/tmp/ducc-bench/images"))


def _layout_tags(layout: Path) -> set[str]:
    if not (layout / "index.json").exists():
        return set()
    done = subprocess.run(["umoci", "ls", "--layout", str(layout)], capture_output=True, text=True)
    return set(done.stdout.split()) if done.returncode == 0 else set()


def push_debian_images(registry_host: str, tags: tuple[str, ...] = TAGS) -> str:
    """Make ``<registry_host>/bench/debian:<tag>`` exist for ``tags``; returns the repository name.

    Skips the calling test (saying why) where the images cannot be built here: building needs root
    (debootstrap, chroot) and Debian's package mirror.
    """
    work = images_dir()
    layout = work / "layout"
    if not set(TAGS) <= _layout_tags(layout):
        if os.geteuid() != 0:
            pytest.skip("the real Debian images are not built yet and building them needs root (debootstrap, chroot)")
        if not MAKE_IMAGES.exists() or not shutil.which("debootstrap"):
            pytest.skip(f"cannot build the real Debian images: {MAKE_IMAGES} or debootstrap missing")
        work.mkdir(parents=True, exist_ok=True)
        log = work / "make-images.log"
        with open(log, "w") as out:
            done = subprocess.run(["bash", str(MAKE_IMAGES), str(work), registry_host], stdout=out, stderr=subprocess.STDOUT,
                                  timeout=3600)
        if done.returncode != 0:
            tail = log.read_text()[-2000:]
            pytest.skip(f"building the real Debian images failed here (mirror unreachable?):\n{tail}")
        return "bench/debian"
    for tag in tags:
        subprocess.run(
            ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{registry_host}/bench/debian:{tag}"],
            check=True, capture_output=True,
        )
    return "bench/debian"
