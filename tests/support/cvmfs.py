"""The ``cvmfs_server`` stand-in (tests/support/cvmfs_server) set up for one repository under tmp.

``cvmfs_server`` cannot be installed on these machines; tests that need it use this stand-in,
which enforces the real command's contract (its docstring lists every rule). Setting up needs
root (overlayfs mounts); teardown unmounts everything it mounted, also after a failed test.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ducc.publish.cvmfs import CvmfsPublisher
from ducc.publish.cvmfs_server import CvmfsServer

BINARY = Path(__file__).resolve().parent / "cvmfs_server"


@dataclass(frozen=True)
class Call:
    """One run of the stand-in; ``rc`` is None for a call that never finished (killed)."""

    argv: tuple[str, ...]
    node: str
    rc: int | None
    seconds: float | None

    @property
    def command(self) -> str:
        return self.argv[0] if self.argv else ""


PUBLISHING = frozenset({"publish", "ingest"})


@dataclass
class CvmfsStandin:
    repository: str
    state: Path
    mount: Path  # /cvmfs/<repo> on the default node: read-only outside a transaction
    client: Path  # what a client or stratum 1 sees: the published revision only
    nodes: dict[str, Path] = field(default_factory=dict)
    binary: Path = BINARY

    def env(self, node: str = "default") -> dict[str, str]:
        """Environment for a process that runs the stand-in (as ``cvmfs_server`` on PATH, too)."""
        env = dict(os.environ)
        env["DUCC_TEST_CVMFS_STATE"] = str(self.state)
        env["DUCC_TEST_CVMFS_NODE"] = node
        env["PATH"] = f"{self.binary.parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def ducc_env(self, state_dir: Path, node: str = "default", **extra: str) -> dict[str, str]:
        """Environment for a ``ducc`` process publishing into this repository through the stand-in:
        ``DUCC_CVMFS_SERVER`` and ``DUCC_CVMFS_MOUNT`` name it, ``--cvmfs-repo``/``DUCC_CVMFS_REPO``
        is left to the caller."""
        env = self.env(node)
        for name in ("DUCC_CVMFS_REPO", "DUCC_PUBLISHER", "DUCC_ROOT", "DUCC_REDIS_URL", "DUCC_STRATUM1_URLS"):
            env.pop(name, None)
        env.update({"DUCC_CVMFS_SERVER": str(self.binary), "DUCC_CVMFS_MOUNT": str(self.nodes.get(node, self.mount)),
                    "DUCC_STATE_DIR": str(state_dir), "DUCC_CACHE_DIR": "off", **extra})
        return env

    def run(self, *args: str, input: bytes | None = None, cwd: Path | None = None,
            node: str = "default") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(self.binary), *args], input=input, capture_output=True,
                              cwd=cwd or self.state.parent, env=self.env(node), timeout=300)

    def calls(self, *commands: str) -> list[Call]:
        """Every call in order (setup and teardown left out), or only those of ``commands``."""
        starts: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        path = self.state / "calls.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            record = json.loads(line)
            if "argv" in record:
                starts[record["id"]] = record
                order.append(record["id"])
            elif record["id"] in starts:
                starts[record["id"]].update(record)
        out = []
        for key in order:
            r = starts[key]
            call = Call(tuple(r["argv"]), r["node"], r.get("rc"),
                        r["end"] - r["start"] if "end" in r else None)
            if call.command in ("mkfs", "rmfs"):
                continue
            if not commands or call.command in commands:
                out.append(call)
        return out

    def publishing_calls(self) -> list[Call]:
        """Calls that make a new revision: ``publish`` and ``ingest``."""
        return [c for c in self.calls() if c.command in PUBLISHING]

    def fail(self, command: str, nth: int = 1, *, at: str = "start", message: str | None = None,
             action: str = "fail", node: str | None = None, exit: int = 1) -> None:
        """Make the ``nth`` call of ``command`` (counted from the first call) fail or hang."""
        path = self.state / "faults.json"
        rules = json.loads(path.read_text()) if path.exists() else []
        rule: dict[str, Any] = {"command": command, "nth": nth, "at": at, "action": action, "exit": exit,
                                "message": message or f"stand-in: injected failure of {command} call {nth}"}
        if node is not None:
            rule["node"] = node
        rules.append(rule)
        path.write_text(json.dumps(rules))

    def clear_faults(self) -> None:
        (self.state / "faults.json").unlink(missing_ok=True)

    def revision(self) -> int:
        for line in (self.client / ".cvmfspublished").read_text().splitlines():
            if line == "--":
                break
            if line.startswith("S"):
                return int(line[1:])
        raise AssertionError("no S line in .cvmfspublished")

    def in_transaction(self, node: str = "default") -> bool:
        return (self.state / "nodes" / node / "txn.json").exists()

    def server(self, node: str = "default", **options: Any) -> CvmfsServer:
        """ducc's edge to ``cvmfs_server``, pointed at this stand-in (as node ``node``)."""
        gateway = json.loads((self.state / "config.json").read_text())["gateway"]
        return CvmfsServer(self.repository, binary=str(self.binary), mount=self.nodes.get(node, self.mount),
                           gateway=gateway, env=self.env(node), **options)

    def publisher(self, staging_root: Path, node: str = "default", *, subdir: str = "",
                  **options: Any) -> CvmfsPublisher:
        """A ducc CVMFS publisher writing through this stand-in."""
        return CvmfsPublisher(self.server(node), subdir=subdir, staging_root=staging_root, **options)


def attach(directory: Path) -> CvmfsStandin:
    """The stand-in that ``cvmfs_standin(directory)`` set up (from another process, say)."""
    state = directory / "cvmfs-state"
    config = json.loads((state / "config.json").read_text())
    nodes = {node: Path(path) for node, path in config["nodes"].items()}
    return CvmfsStandin(config["repository"], state, nodes.get("default", next(iter(nodes.values()))),
                        state / "client", nodes)


def _mounts_under(directory: Path) -> list[str]:
    prefix = os.path.realpath(directory) + "/"
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4].replace("\\040", " ") for line in fh]
    return sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)


@contextmanager
def cvmfs_standin(directory: Path, repository: str = "test.cern.ch", *, gateway: bool = False,
                  nodes: Sequence[str] = ("default",), owner: tuple[int, int] | None = None) -> Iterator[CvmfsStandin]:
    """A fresh repository at revision 1 under ``directory``; every mount is gone on exit."""
    if os.geteuid() != 0:
        pytest.skip("the cvmfs_server stand-in mounts overlayfs: run the tests as root")
    directory.mkdir(parents=True, exist_ok=True)
    state = directory / "cvmfs-state"
    state.mkdir()
    mounts = {node: directory / ("cvmfs" if node == "default" else f"cvmfs-{node}") / repository for node in nodes}
    config = {"repository": repository, "gateway": gateway,
              "owner": list(owner or (os.getuid(), os.getgid())),
              "nodes": {node: str(path) for node, path in mounts.items()}}
    (state / "config.json").write_text(json.dumps(config, indent=1))
    standin = CvmfsStandin(repository, state, mounts["default"] if "default" in mounts else next(iter(mounts.values())),
                           state / "client", dict(mounts))
    try:
        done = standin.run("mkfs", repository, node=nodes[0])
        if done.returncode != 0:
            raise RuntimeError(f"stand-in mkfs failed: {done.stderr.decode()}")
        yield standin
    finally:
        standin.run("rmfs", "-f", repository, node=nodes[0])
        for point in _mounts_under(directory):  # whatever the stand-in could not unmount itself
            subprocess.run(["umount", "-l", point], capture_output=True)
        leftover = _mounts_under(directory)
        assert not leftover, f"mounts left behind: {leftover}"
