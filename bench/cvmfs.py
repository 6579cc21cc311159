"""Times ducc converting the Debian toolchain image into a real CVMFS repository (see cvmfs.sh).

Each round makes a fresh repository with the real ``cvmfs_server mkfs`` (CernVM-FS on this machine),
converts ``bench/debian:big`` (3 layers, all new) with an empty blob cache, and measures: the wall
time, every ``cvmfs_server`` call (through bench/cvmfs_server_timed, which logs each call's start,
end and exit code), and the peak RSS of ducc together with every process below it (the guard,
``cvmfs_server`` and the programs it runs), sampled. Then, on the same repository, the calls a moved
tag and an unchanged tag cost; then the repository is removed again.

DUCC (CVMFS's own Go converter) cannot run here (no Go toolchain or source): its figures were
recorded on a real stratum 0 with the same image and are printed for comparison, not measured in the
same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
DUCC = [str(HERE / ".venv/bin/ducc")]
TIMED = HERE / "bench" / "cvmfs_server_timed"
MANIFEST_TYPES = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json"])
# DUCC on a real stratum 0, the same image from a loopback registry, images whose layers were all new.
DUCC_RECORDED = {"wall": 72.0, "rss_mb": 421, "calls": 38, "publishing": 20}
PUBLISHING = ("publish", "ingest")  # the commands that make a revision
LARGEST: list[tuple[str, int]] = []  # the largest processes at the peak of the last run
FLAT_LINES: list[str] = []  # what the last run logged about its flat root


@dataclass
class Call:
    seconds: float
    rc: int
    argv: list[str]

    @property
    def command(self) -> str:
        return self.argv[0] if self.argv else ""


@dataclass
class Run:
    wall: float
    rss: int  # peak of the summed RSS of ducc and its descendants, bytes
    calls: list[Call]
    largest: list[tuple[str, int]]  # the largest of them at that peak (name, RSS)
    flat: list[str]  # what ducc logged about the flat root

    @property
    def server_seconds(self) -> float:
        return sum(c.seconds for c in self.calls)

    @property
    def publishing(self) -> int:
        return sum(c.command in PUBLISHING for c in self.calls)


def _tree_rss(root: int) -> tuple[int, list[tuple[str, int]]]:
    """RSS of ``root`` and all its descendants, bytes (one pass over /proc), and each one's (name, RSS)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total = 0
    members: list[tuple[str, int]] = []
    for pid in rss:
        walk = pid
        while walk > 1 and walk != root:
            walk = parent.get(walk, 0)
        if walk == root:
            total += rss[pid]
            members.append((_name(pid), rss[pid]))
    return total, members


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


def run(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """Wall seconds of ``command`` and the peak RSS of its process tree (sampled every 0.1 s)."""
    os.sync()
    started = time.perf_counter()
    log = open(cwd / "ducc.log", "w+b")  # a file, not a pipe: ducc's log must never block it
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)
    peak = 0
    LARGEST.clear()
    while process.poll() is None:
        total, members = _tree_rss(process.pid)
        if total > peak:
            peak = total
            LARGEST[:] = sorted(members, key=lambda m: -m[1])[:4]
        time.sleep(0.1)
    wall = time.perf_counter() - started
    log.seek(0)
    stderr = log.read().decode(errors="replace")
    log.close()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{stderr}")
    FLAT_LINES[:] = [line.split(" INFO ", 1)[-1] for line in stderr.splitlines() if "flat root" in line]
    return wall, peak


def read_calls(log: Path) -> list[Call]:
    calls = []
    for line in log.read_text().splitlines() if log.exists() else []:
        start, end, rc, *argv = line.split()
        calls.append(Call(float(end) - float(start), int(rc), argv))
    return calls


def server(*args: str) -> None:
    done = subprocess.run(["cvmfs_server", *args], cwd="/", capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"cvmfs_server {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def retag(registry: str, source: str, target: str) -> None:
    """Point ``bench/debian:<target>`` at the manifest of ``:<source>`` (one GET, one PUT)."""
    base = f"http://{registry}/v2/bench/debian/manifests"
    with urllib.request.urlopen(urllib.request.Request(f"{base}/{source}", headers={"Accept": MANIFEST_TYPES})) as got:
        body, media_type = got.read(), got.headers["Content-Type"]
    put = urllib.request.Request(f"{base}/{target}", data=body, method="PUT", headers={"Content-Type": media_type})
    urllib.request.urlopen(put).close()


def one_round(image: str, work: Path, repository: str, extra: dict[str, list[tuple[int, int]]],
              baseline: Path | None = None) -> Run:
    for path in (work / "state", work / "cache"):
        shutil.rmtree(path, ignore_errors=True)
    log = work / "calls.log"
    log.unlink(missing_ok=True)
    server("mkfs", "-o", "root", repository)
    try:
        env = {**os.environ, "DUCC_CVMFS_SERVER": str(TIMED), "BENCH_CALLS_LOG": str(log),
               "DUCC_STATE_DIR": str(work / "state"), "DUCC_CACHE_DIR": str(work / "cache")}
        for name in ("DUCC_CVMFS_REPO", "DUCC_PUBLISHER", "DUCC_ROOT", "DUCC_REDIS_URL", "DUCC_CVMFS_MOUNT"):
            env.pop(name, None)
        ducc = DUCC
        if baseline is not None:  # another checkout's ducc, run by this one's virtualenv
            env["PYTHONPATH"] = str(baseline)
            ducc = [str(HERE / ".venv/bin/python"), "-m", "ducc"]
        wall, rss = run([*ducc, "convert", image, "--cvmfs-repo", repository], env, work)
        result = Run(wall, rss, read_calls(log), list(LARGEST), list(FLAT_LINES))
        registry = image.split("/")[0]
        for tag, source in (("moved", "base"), ("moved", "big")):  # a new flat root, then an already published one
            retag(registry, source, tag)
            before = len(read_calls(log))
            run([*ducc, "convert", f"{registry}/bench/debian:{tag}", "--cvmfs-repo", repository], env, work)
            calls = read_calls(log)[before:]
            extra.setdefault(f"tag moved onto {source}", []).append(
                (len(calls), sum(c.command in PUBLISHING for c in calls)))
        before = len(read_calls(log))
        run([*ducc, "convert", image, "--cvmfs-repo", repository], env, work)
        calls = read_calls(log)[before:]
        extra.setdefault("unchanged tag", []).append((len(calls), sum(c.command in PUBLISHING for c in calls)))
    finally:
        server("rmfs", "-f", repository)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repository", default="benchcvmfs.ducc.test")
    parser.add_argument("--baseline", type=Path,
                        help="a checkout of other ducc code (e.g. `git archive` of an older commit): its rounds "
                             "alternate with this checkout's, and both are reported")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("cvmfs_server mkfs and rmfs need root: run the benchmark as root")
    if not shutil.which("cvmfs_server"):
        sys.exit("cvmfs_server is not installed (see ../shared/cvmfs/README.md)")
    image = f"{args.registry}/bench/debian:big"
    work = args.work / "cvmfs-runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    runs: list[Run] = []
    baseline_runs: list[Run] = []
    extra: dict[str, list[tuple[int, int]]] = {}
    baseline_extra: dict[str, list[tuple[int, int]]] = {}
    for round_ in range(args.rounds):
        order = [None] if args.baseline is None else ([args.baseline, None] if round_ % 2 == 0 else [None, args.baseline])
        for code in order:
            r = one_round(image, work, args.repository, extra if code is None else baseline_extra, code)
            (runs if code is None else baseline_runs).append(r)
            who = "this code" if code is None else f"baseline {code}"
            print(f"round {round_ + 1}, {who}: {r.wall:6.2f} s  inside cvmfs_server {r.server_seconds:6.2f} s  "
                  f"peak RSS with children {r.rss / 1e6:4.0f} MB  {len(r.calls)} calls, {r.publishing} publishing",
                  flush=True)
            print("  largest processes at the peak: "
                  + ", ".join(f"{name} {size / 1e6:.0f} MB" for name, size in r.largest), flush=True)
            for line in r.flat:
                print(f"  {line}", flush=True)
            print("  calls: " + ", ".join(f"{' '.join(c.argv[:2] if c.command != 'ingest' else c.argv[:1])} "
                                          f"{c.seconds:.1f}s" + (f" (exit {c.rc})" if c.rc else "") for c in r.calls),
                  flush=True)
    shutil.rmtree(work, ignore_errors=True)
    if baseline_runs:
        print()
        print(f"baseline: wall {statistics.median(r.wall for r in baseline_runs):.1f} s, inside cvmfs_server "
              f"{statistics.median(r.server_seconds for r in baseline_runs):.1f} s, peak RSS with children "
              f"{max(r.rss for r in baseline_runs) / 1e6:.0f} MB, {len(baseline_runs[0].calls)} calls, "
              f"{baseline_runs[0].publishing} publishing (medians of {len(baseline_runs)})")
        for what, counts in baseline_extra.items():
            print(f"baseline, {what}: {counts[0][0]} cvmfs_server calls, {counts[0][1]} publishing")

    wall = statistics.median(r.wall for r in runs)
    inside = statistics.median(r.server_seconds for r in runs)
    rss = max(r.rss for r in runs) / 1e6
    print()
    print(f"image: {image} (3 layers, all new), empty cache, fresh repository; medians of {args.rounds} rounds "
          "(peak RSS: the highest)")
    print(f"{'':40}{'ducc (this run)':>18}   DUCC (recorded on a real stratum 0, NOT measured in this run)")
    print(f"{'conversion, wall':40}{wall:17.1f}s   {DUCC_RECORDED['wall']:.1f} s  -> ratio {wall / DUCC_RECORDED['wall']:.2f}")
    print(f"{'of which inside cvmfs_server':40}{inside:17.1f}s")
    print(f"{'peak RSS, with children':40}{rss:15.0f} MB   {DUCC_RECORDED['rss_mb']} MB")
    print(f"{'cvmfs_server calls':40}{len(runs[0].calls):18d}   {DUCC_RECORDED['calls']}")
    print(f"{'publishing calls (ingest, publish)':40}{runs[0].publishing:18d}   {DUCC_RECORDED['publishing']}")
    for what, counts in extra.items():
        print(f"{what}: {counts[0][0]} cvmfs_server calls, {counts[0][1]} publishing")


if __name__ == "__main__":
    main()
