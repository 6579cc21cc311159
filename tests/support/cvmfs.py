"""CVMFS test beds: the real ``cvmfs_server`` (``real_cvmfs``) and its stand-in (``cvmfs_standin``).

The real CernVM-FS 2.12 server is the test bed wherever it can run (root, /dev/fuse; ./bootstrap.sh
installs it from ../shared/cvmfs): each test gets a repository of its own, ``mkfs`` before and
``rmfs -f`` after, reached through a recorder that logs every call and injects faults
(tests/support/cvmfs_server_recorder). The stand-in (tests/support/cvmfs_server) remains for what
one machine's real server cannot be: a gateway with leases and several publisher nodes.
tests/integration/test_cvmfs_differential.py keeps the two in agreement.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
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
    started: float | None = None  # time.time() of the call's start and end
    ended: float | None = None

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
        return _read_calls(self.state, commands)

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

    @property
    def manifest(self) -> Path:
        """The manifest the stratum 0's web server serves (``/srv/cvmfs/<repo>/.cvmfspublished``)."""
        return self.state / "srv" / ".cvmfspublished"

    def revision(self) -> int:
        for line in self.manifest.read_text().splitlines():
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
        options.setdefault("manifest", self.manifest)
        options.setdefault("spool", self.state / "no-spool")
        return CvmfsServer(self.repository, binary=str(self.binary), mount=self.nodes.get(node, self.mount),
                           gateway=gateway, env=self.env(node), **options)

    def publisher(self, staging_root: Path, node: str = "default", *, subdir: str = "",
                  **options: Any) -> CvmfsPublisher:
        """A ducc CVMFS publisher writing through this stand-in."""
        return CvmfsPublisher(self.server(node), subdir=subdir, staging_root=staging_root, **options)


def attach(directory: Path) -> CvmfsStandin | RealCvmfs:
    """The repository that ``cvmfs_standin(directory)`` or ``real_cvmfs(directory)`` set up (from another
    process, say)."""
    state = directory / "cvmfs-state"
    config = json.loads((state / "config.json").read_text())
    if "real" in config:
        return RealCvmfs(config["repository"], state, config["real"])
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


# -- the real cvmfs_server ------------------------------------------------------------------------

RECORDER = Path(__file__).resolve().parent / "cvmfs_server_recorder"
SETUP = Path(__file__).resolve().parents[2].parent / "shared" / "cvmfs" / "setup.sh"


def real_server_missing() -> str | None:
    """Why the real ``cvmfs_server`` cannot be used here (None: it can). Where it could be installed
    (root, /dev/fuse, ../shared/cvmfs/setup.sh) but is not, the tests fail instead: run ./bootstrap.sh."""
    if os.geteuid() != 0:
        return "the real cvmfs_server needs root (mkfs, overlayfs, FUSE): run the tests as root"
    if not os.path.exists("/dev/fuse"):
        return "the real cvmfs_server needs /dev/fuse, which this machine does not have"
    if shutil.which("cvmfs_server") is None:
        if SETUP.exists():
            pytest.fail("cvmfs_server is not installed although it can be here: run ./bootstrap.sh "
                        f"(it runs {SETUP})")
        return f"cvmfs_server is not installed and there is no installer at {SETUP}"
    return None


def _run_quietly(argv: Sequence[str], *, input: bytes | None = None, env: dict[str, str] | None = None,
                 cwd: Path = Path("/"), timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` with its output in files, never pipes: ``cvmfs_server`` restarts ``cvmfs2``, which may
    inherit them and keep a pipe open for good."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
        inp.write(input or b"")
        inp.seek(0)
        done = subprocess.run(list(argv), stdin=inp, stdout=out, stderr=err, env=env, cwd=cwd, timeout=timeout)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())


@dataclass
class RealCvmfs:
    """A repository of its own on this machine's real CernVM-FS 2.12 stratum 0, reached through the
    recorder (tests/support/cvmfs_server_recorder) so that calls are logged and faults injected.

    The same interface as ``CvmfsStandin``: ``mount`` is ``/cvmfs/<repo>`` (writable only in a
    transaction), ``client`` the published revision only (the FUSE mount under the spool directory),
    ``manifest`` the stratum 0's signed ``.cvmfspublished``."""

    repository: str
    state: Path
    real: str
    mount: Path = field(init=False)
    client: Path = field(init=False)
    manifest: Path = field(init=False)
    binary: Path = RECORDER
    nodes: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mount = Path("/cvmfs") / self.repository
        self.client = Path("/var/spool/cvmfs") / self.repository / "rdonly"
        self.manifest = Path("/srv/cvmfs") / self.repository / ".cvmfspublished"
        bin_dir = self.state / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        link = bin_dir / "cvmfs_server"
        if not link.exists():
            link.symlink_to(RECORDER)

    def env(self, node: str = "default") -> dict[str, str]:
        """Environment for a process that runs the recorder (as ``cvmfs_server`` on PATH, too)."""
        env = dict(os.environ)
        env["DUCC_TEST_CVMFS_STATE"] = str(self.state)
        env["DUCC_TEST_CVMFS_REAL"] = self.real
        env["PATH"] = f"{self.state / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def ducc_env(self, state_dir: Path, node: str = "default", **extra: str) -> dict[str, str]:
        """Environment for a ``ducc`` process publishing into this repository through the recorder."""
        env = self.env(node)
        for name in ("DUCC_CVMFS_REPO", "DUCC_PUBLISHER", "DUCC_ROOT", "DUCC_REDIS_URL", "DUCC_STRATUM1_URLS"):
            env.pop(name, None)
        env.update({"DUCC_CVMFS_SERVER": str(self.binary), "DUCC_CVMFS_MOUNT": str(self.mount),
                    "DUCC_STATE_DIR": str(state_dir), "DUCC_CACHE_DIR": "off", **extra})
        return env

    def run(self, *args: str, input: bytes | None = None, cwd: Path | None = None,
            node: str = "default") -> subprocess.CompletedProcess[bytes]:
        """One call through the recorder (from ``/`` unless told), output captured in files."""
        return _run_quietly([str(self.binary), *args], input=input, env=self.env(node), cwd=cwd or Path("/"))

    def calls(self, *commands: str) -> list[Call]:
        """Every call through the recorder in order, or only those of ``commands``."""
        return _read_calls(self.state, commands)

    def publishing_calls(self) -> list[Call]:
        """Calls that made (or tried to make) a new revision: ``publish`` and ``ingest``."""
        return [c for c in self.calls() if c.command in PUBLISHING]

    def fail(self, command: str, nth: int = 1, *, at: str = "start", message: str | None = None,
             action: str = "fail", node: str | None = None, exit: int = 1, delay: float = 0.5) -> None:
        """Make the ``nth`` call of ``command`` (counted from the first) fail, hang or be killed mid-way
        (``action="kill"``, after ``delay`` seconds)."""
        path = self.state / "faults.json"
        rules = json.loads(path.read_text()) if path.exists() else []
        rules.append({"command": command, "nth": nth, "at": at, "action": action, "exit": exit, "delay": delay,
                      "message": message or f"injected failure of {command} call {nth}"})
        path.write_text(json.dumps(rules))

    def clear_faults(self) -> None:
        (self.state / "faults.json").unlink(missing_ok=True)

    def revision(self) -> int:
        """The published revision, as ``cvmfs_server`` reads it (``user.revision`` of the read-only mount)."""
        return int(os.getxattr(self.client, "user.revision"))

    def in_transaction(self, node: str = "default") -> bool:
        """Whether a transaction is open: the flag ``cvmfs_server`` itself tests (``list`` reads it too, but
        reports nothing for a repository while another one on the machine is being created or removed)."""
        return (Path("/var/spool/cvmfs") / self.repository / "in_transaction.lock").is_file()

    def server(self, node: str = "default", **options: Any) -> CvmfsServer:
        """ducc's edge to ``cvmfs_server``, pointed at the recorder."""
        return CvmfsServer(self.repository, binary=str(self.binary), mount=self.mount, env=self.env(node),
                           **options)

    def publisher(self, staging_root: Path, node: str = "default", *, subdir: str = "",
                  **options: Any) -> CvmfsPublisher:
        """A ducc CVMFS publisher writing through the recorder."""
        return CvmfsPublisher(self.server(node), subdir=subdir, staging_root=staging_root, **options)


def _read_calls(state: Path, commands: Sequence[str]) -> list[Call]:
    """The calls logged in ``state``/calls.jsonl, by the stand-in or the recorder alike: in order, without
    setup and teardown (``mkfs``, ``rmfs``), only those of ``commands`` if any are named."""
    starts: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    path = state / "calls.jsonl"
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
        call = Call(tuple(r["argv"]), r["node"], r.get("rc"), r["end"] - r["start"] if "end" in r else None,
                    r.get("start"), r.get("end"))
        if call.command in ("mkfs", "rmfs"):
            continue
        if not commands or call.command in commands:
            out.append(call)
    return out


@contextmanager
def real_cvmfs(directory: Path, prefix: str = "t") -> Iterator[RealCvmfs]:
    """A fresh repository ``<prefix><random>.ducc.test`` (``cvmfs_server mkfs -o root``) at revision 1,
    removed again (``rmfs -f``) on exit, also after a failed test. Skips where the real server cannot run."""
    why = real_server_missing()
    if why:
        pytest.skip(why)
    real = shutil.which("cvmfs_server")
    assert real is not None
    name = f"{prefix}{secrets.token_hex(4)}.ducc.test"
    state = directory / "cvmfs-state"
    state.mkdir(parents=True)
    made = _run_quietly([real, "mkfs", "-o", "root", name], timeout=600)
    if made.returncode != 0:
        _run_quietly([real, "rmfs", "-f", name])
        raise RuntimeError(f"cvmfs_server mkfs {name} failed (exit {made.returncode}): "
                           f"{(made.stderr or made.stdout).decode(errors='replace')[-2000:]}")
    (state / "config.json").write_text(json.dumps({"repository": name, "real": real}))
    try:
        yield RealCvmfs(name, state, real)
    finally:
        _run_quietly([real, "abort", "-f", name])
        removed = _run_quietly([real, "rmfs", "-f", name], timeout=600)
        assert removed.returncode == 0, f"rmfs -f {name} failed: {removed.stderr.decode(errors='replace')}"


def tar_of(*entries: tuple[str, bytes | str | None]) -> bytes:
    """A plain tar to feed ``ingest``: (name, content) for files (0644), (name, None) for directories (0755),
    ("name", "->target") for symlinks, ("name", "=>target") for hardlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, str) and content.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            elif isinstance(content, str) and content.startswith("=>"):
                info.type, info.linkname = tarfile.LNKTYPE, content[2:]
                tar.addfile(info)
            else:
                data = content.encode() if isinstance(content, str) else content
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
