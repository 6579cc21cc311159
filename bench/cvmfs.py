"""Times ducc converting the Debian toolchain image into a CVMFS repository (see cvmfs.sh).

Two kinds of run, alternating: through the cvmfs_server stand-in (tests/support/cvmfs_server, which
really unpacks every stream into an overlayfs layer), and with cvmfs_server replaced by
bench/cvmfs_server_reader, which only reads what ingest is given: there an ingest lasts as long as
ducc takes to produce its stream. Then, on the stand-in's repository, the calls a moved tag and an
unchanged tag cost. DUCC itself needs a real cvmfs_server and cannot run here; its figures, recorded
on a real stratum 0 with the same image, are printed for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.support.cvmfs import cvmfs_standin  # noqa: E402  (the stand-in lives with the tests)

DUCC = [str(HERE / ".venv/bin/ducc"), "-q"]
READER = HERE / "bench" / "cvmfs_server_reader"
REPOSITORY = "bench.cern.ch"
MANIFEST_TYPES = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json"])
# DUCC (CVMFS's Go tool) on a real stratum 0, the same image from a loopback registry (issue 9).
DUCC_RECORDED = {"wall": 57.6, "rss_mb": 404, "calls": 44, "publishing": 23}


@dataclass
class Run:
    wall: float
    rss: int  # ducc's own peak RSS (VmHWM), bytes
    ingest_seconds: float  # the ingests, summed
    calls: int
    publishing: int


def run(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """Wall seconds of ``command`` and its own peak RSS (sampled VmHWM; children not counted)."""
    os.sync()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{stderr}")
    return wall, peak


def fresh(path: Path) -> Path:
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    path.mkdir(parents=True)
    return path


def retag(registry: str, source: str, target: str) -> None:
    """Point ``bench/debian:<target>`` at the manifest of ``:<source>`` (one GET, one PUT)."""
    base = f"http://{registry}/v2/bench/debian/manifests"
    with urllib.request.urlopen(urllib.request.Request(f"{base}/{source}", headers={"Accept": MANIFEST_TYPES})) as got:
        body, media_type = got.read(), got.headers["Content-Type"]
    put = urllib.request.Request(f"{base}/{target}", data=body, method="PUT", headers={"Content-Type": media_type})
    urllib.request.urlopen(put).close()


def through_standin(image: str, work: Path, extra: dict[str, list]) -> Run:
    with cvmfs_standin(fresh(work / "standin"), REPOSITORY) as cvmfs:
        env = cvmfs.ducc_env(work / "state", DUCC_CACHE_DIR=str(fresh(work / "cache")))
        wall, rss = run([*DUCC, "convert", image, "--cvmfs-repo", REPOSITORY], env, work)
        calls = cvmfs.calls()
        result = Run(wall, rss, sum(c.seconds or 0 for c in calls if c.command == "ingest"), len(calls),
                     len(cvmfs.publishing_calls()))
        registry = image.split("/")[0]
        for tag, source in (("moved", "base"), ("moved", "big")):  # a new flat root, then an already published one
            retag(registry, source, tag)
            before, before_publishing = len(cvmfs.calls()), len(cvmfs.publishing_calls())
            run([*DUCC, "convert", f"{registry}/bench/debian:{tag}", "--cvmfs-repo", REPOSITORY], env, work)
            extra.setdefault(f"tag moved onto {source}", []).append(
                (len(cvmfs.calls()) - before, len(cvmfs.publishing_calls()) - before_publishing))
        before, before_publishing = len(cvmfs.calls()), len(cvmfs.publishing_calls())
        run([*DUCC, "convert", image, "--cvmfs-repo", REPOSITORY], env, work)
        extra.setdefault("unchanged tag", []).append(
            (len(cvmfs.calls()) - before, len(cvmfs.publishing_calls()) - before_publishing))
        per_call = [(c.command, round(c.seconds or 0, 1)) for c in calls]
        print(f"  calls: {json.dumps(per_call)}", flush=True)
    return result


def through_reader(image: str, work: Path) -> Run:
    mount = fresh(work / "reader") / "cvmfs" / REPOSITORY
    mount.mkdir(parents=True)
    (mount / ".cvmfspublished").write_text("S1\n--\n")
    log = work / "reader" / "calls.log"
    env = {**os.environ, "DUCC_CVMFS_SERVER": str(READER), "DUCC_CVMFS_MOUNT": str(mount),
           "DUCC_STATE_DIR": str(work / "state"), "DUCC_CACHE_DIR": str(fresh(work / "cache")),
           "BENCH_READER_LOG": str(log)}
    wall, rss = run([*DUCC, "convert", image, "--cvmfs-repo", REPOSITORY], env, work)
    ingests = [line.split() for line in log.read_text().splitlines()]
    print(f"  ingests (layers, then the flat root): {[round(float(end) - float(start), 1) for _, start, end in ingests]}",
          flush=True)
    return Run(wall, rss, sum(float(end) - float(start) for _, start, end in ingests), len(ingests), len(ingests))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the cvmfs_server stand-in mounts overlayfs: run the benchmark as root")
    image = f"{args.registry}/bench/debian:big"
    work = fresh(args.work / "cvmfs-runs")
    standin: list[Run] = []
    reader: list[Run] = []
    extra: dict[str, list] = {}
    for round_ in range(args.rounds):
        for who in (["standin", "reader"] if round_ % 2 == 0 else ["reader", "standin"]):
            if who == "standin":
                r = through_standin(image, work, extra)
                standin.append(r)
                print(f"round {round_ + 1}: stand-in  {r.wall:6.2f}s  rss {r.rss / 1e6:4.0f} MB  ingests {r.ingest_seconds:5.2f}s  "
                      f"{r.calls} calls, {r.publishing} publishing", flush=True)
            else:
                r = through_reader(image, work)
                reader.append(r)
                print(f"round {round_ + 1}: reader    {r.wall:6.2f}s  rss {r.rss / 1e6:4.0f} MB  "
                      f"ducc's streams {r.ingest_seconds:5.2f}s ({r.calls} ingests)", flush=True)
    subprocess.run(["rm", "-rf", str(work)], check=False)

    def med(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    s_wall, s_rss, s_ingest = med(standin, "wall"), max(r.rss for r in standin), med(standin, "ingest_seconds")
    r_wall, r_streams = med(reader, "wall"), med(reader, "ingest_seconds")
    print()
    print(f"image: {image} (3 layers), empty cache, fresh repository; medians of {args.rounds} alternating rounds")
    print(f"{'':44}{'ducc (here)':>16}{'DUCC (recorded on a real stratum 0, not run here)':>52}")
    print(f"{'conversion, wall':44}{s_wall:15.1f}s{DUCC_RECORDED['wall']:51.1f}s")
    print(f"{'peak RSS':44}{s_rss / 1e6:13.0f} MB{DUCC_RECORDED['rss_mb']:49d} MB")
    print(f"{'cvmfs_server calls':44}{standin[0].calls:16d}{DUCC_RECORDED['calls']:52d}")
    print(f"{'publishing calls (ingest, publish)':44}{standin[0].publishing:16d}{DUCC_RECORDED['publishing']:52d}")
    print()
    print(f"through the stand-in: the ingests took {s_ingest:.1f} s of the {s_wall:.1f} s conversion")
    print(f"with a command that only reads: conversion {r_wall:.1f} s, of which ducc producing its ingest streams "
          f"{r_streams:.1f} s ({r_streams / s_ingest:.0%} of the stand-in's ingest time)")
    for what, counts in extra.items():
        calls, publishing = counts[0]
        print(f"{what}: {calls} cvmfs_server calls, {publishing} publishing")


if __name__ == "__main__":
    main()
