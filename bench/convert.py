"""Times ducc against skopeo + umoci on the same image, alternating, in one run (see convert.sh)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
DUCC = [str(HERE / ".venv/bin/ducc"), "-q"]


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command."""
    os.sync()  # neither tool pays for the other's writeback
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed:\n{stderr}")
    return wall, usage.ru_maxrss * 1024


def fresh(path: Path) -> Path:
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    path.mkdir(parents=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    image = f"{args.registry}/bench/debian:big"
    second = f"{args.registry}/bench/debian:edited"
    work = args.work / "runs"
    ducc_times, ducc_rss, peer_times, peer_rss, second_times = [], [], [], [], []
    umoci = ["umoci", "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"])
    for round_ in range(args.rounds):
        order = ["ducc", "peer"] if round_ % 2 == 0 else ["peer", "ducc"]
        for who in order:
            if who == "ducc":
                root = fresh(work / "ducc-root")
                env = {**os.environ, "DUCC_CACHE_DIR": str(fresh(work / "ducc-cache"))}
                wall, rss = run([*DUCC, "convert", image, "--root", str(root)], env)
                ducc_times.append(wall)
                ducc_rss.append(rss)
                wall2, rss2 = run([*DUCC, "convert", second, "--root", str(root)], env)
                second_times.append(wall2)
                ducc_rss.append(rss2)
                print(f"round {round_ + 1}: ducc convert {wall:6.2f}s  rss {rss / 1e6:5.0f} MB   "
                      f"second tag {wall2:5.2f}s", flush=True)
            else:
                oci = fresh(work / "peer") / "oci"
                copy, rss_a = run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{image}", f"oci:{oci}:img"])
                unpack, rss_b = run([*umoci, "--image", f"{oci}:img", str(work / "peer" / "bundle")])
                peer_times.append(copy + unpack)
                peer_rss.append(max(rss_a, rss_b))
                print(f"round {round_ + 1}: skopeo copy {copy:5.2f}s + umoci unpack {unpack:6.2f}s = {copy + unpack:6.2f}s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    d, p, s = statistics.median(ducc_times), statistics.median(peer_times), statistics.median(second_times)
    print()
    print(f"image: {image} (3 layers); medians of {args.rounds} alternating rounds")
    print(f"ducc convert (empty cache, fresh root): {d:6.2f}s   peak RSS {max(ducc_rss) / 1e6:.0f} MB")
    print(f"skopeo copy + umoci unpack:             {p:6.2f}s   peak RSS {max(peer_rss) / 1e6:.0f} MB")
    print(f"ratio ducc / peer = {d / p:.2f}   (target <= 0.75)   {'MET' if d / p <= 0.75 else 'MISSED'}")
    print(f"peak RSS {max(ducc_rss) / 1e6:.0f} MB   (target <= 300 MB)   {'MET' if max(ducc_rss) <= 300e6 else 'MISSED'}")
    print(f"second tag sharing all but its top layer: {s:.2f}s; ratio to full = {s / d:.2f}   (target <= 0.25)   "
          f"{'MET' if s / d <= 0.25 else 'MISSED'}")


if __name__ == "__main__":
    main()
