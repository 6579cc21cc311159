"""The edge that runs ``cvmfs_server`` (CernVM-FS 2.12) on a stratum 0 or gateway publisher.

Every method runs one command and either returns after exit 0 or raises CvmfsError with the
command, its exit code and its own words (stderr, or stdout where the real script echoes its
refusal there, e.g. publish's "Repository … is not in a transaction"). Nothing is retried here:
the caller decides, from ``error.temporary``. Commands run with the current directory outside
the mount (``publish`` and ``ingest`` refuse to run from inside it) and with stdin closed, so no
confirmation prompt can ever wait for an answer; ``ingest`` reads the tar stream, through the guard
of ``ducc.publish.ingest_guard``.

Paths handed to the command (base dir, delete paths, lease sub-paths) are relative to the
repository root and must survive the real script, which expands them unquoted: whitespace and
glob characters are refused here before anything runs.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, BinaryIO

from ducc.errors import CvmfsError, PublishError
from ducc.publish import ingest_guard

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNSAFE = re.compile(r"[\s*?\[\]]")
_OUTPUT_TAIL = 4000
_FRAME = 4 << 20  # the largest frame ducc sends (tarfile writes 1 MiB at a time anyway)
_GUARD = (sys.executable, "-I", "-S", ingest_guard.__file__, "--")
# cvmfs_swissknife (ingest, publish) buffers what it compresses in memory up to min(1 GiB, RAM / 5) by
# default; _CVMFS_SERVER_PIPELINE_MB (read by its ingestion pipeline) sets that budget. 64 MiB keeps an
# ingest of the bench image's largest layer at 110 MB instead of 380 MB, in the same time. A value in
# the environment (the operator's) wins.
PIPELINE_MB = "64"


def _clean_path(path: str, what: str) -> str:
    """``path`` as the command wants it: relative, no ``..``, no characters the shell would mangle."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PublishError(f"{what} {path!r} contains '..'")
    if _UNSAFE.search(path):
        raise PublishError(f"{what} {path!r} contains whitespace or glob characters, which cvmfs_server's "
                           "shell script would split or expand")
    return "/".join(parts)


class _Frames:
    """The tar stream as the guard's frames (``ducc.publish.ingest_guard``): nothing the guard forwards
    can end the archive; only ``end()`` does, after the whole stream was written and verified."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self.written = 0
        self.abandoned = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.abandoned:  # a writer flushing late (a tar buffer being collected) reaches nothing
            return len(data)
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _FRAME):
            chunk = view[start:start + _FRAME]
            self._sink.write(ingest_guard.frame_header(len(chunk)))
            self._sink.write(chunk)
            self.written += len(chunk)
        return len(view)

    def flush(self) -> None:
        self._sink.flush()

    def end(self) -> None:
        self._sink.write(ingest_guard.END)
        self._sink.flush()


class CvmfsServer:
    """One repository on this publisher, driven through ``binary`` (``cvmfs_server`` on PATH).

    ``mount`` is ``/cvmfs/<repository>``, where the published state (and, during a transaction,
    the open changes) can be read; ``manifest`` is the ``.cvmfspublished`` file whose ``S`` line is
    the revision (default: at the mount root). ``gateway`` says the repository publishes through a
    gateway, where ``ingest`` takes one ``--delete`` at a time.
    """

    def __init__(
        self,
        repository: str,
        *,
        binary: str = "cvmfs_server",
        mount: Path | None = None,
        manifest: Path | None = None,
        gateway: bool = False,
        env: dict[str, str] | None = None,
        cwd: Path = Path("/"),
        timeout: float | None = 3600.0,
        abort_grace: float = 60.0,
    ) -> None:
        if not _NAME.match(repository):
            raise PublishError(f"invalid CVMFS repository name {repository!r}")
        self.repository = repository
        self.binary = binary
        self.mount = mount if mount is not None else Path("/cvmfs") / repository
        self.manifest = manifest if manifest is not None else self.mount / ".cvmfspublished"
        self.gateway = gateway
        self.env = env
        self.timeout = timeout
        self.abort_grace = abort_grace
        resolved = os.path.realpath(cwd)
        mount_real = os.path.realpath(self.mount)
        if resolved == mount_real or resolved.startswith(mount_real + "/"):
            raise PublishError(f"cvmfs_server must not run from inside {self.mount}")
        self.cwd = cwd

    # -- running one command --------------------------------------------------------------------

    def _command(self, *args: str) -> tuple[str, ...]:
        return (self.binary, *args)

    def _environment(self) -> dict[str, str]:
        env = dict(self.env if self.env is not None else os.environ)
        env.setdefault("_CVMFS_SERVER_PIPELINE_MB", PIPELINE_MB)
        return env

    def _run(self, *args: str, what: str | None = None) -> subprocess.CompletedProcess[str]:
        command = self._command(*args)
        log.debug("running %s", " ".join(command))
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  cwd=self.cwd, env=self._environment(), timeout=self.timeout)
        except FileNotFoundError as exc:
            raise CvmfsError(command, 127, f"{self.binary} not found: {exc}", what=what) from exc
        except subprocess.TimeoutExpired as exc:
            raise CvmfsError(command, -1, f"no answer within {self.timeout} s", what=what) from exc
        if done.returncode != 0:
            raise CvmfsError(command, done.returncode, _words(done.stderr, done.stdout), what=what)
        return done

    # -- the commands ---------------------------------------------------------------------------

    def transaction(self, subpath: str | None = None, *, retry_timeout: int | None = None,
                    template: tuple[str, str] | None = None) -> None:
        """Open a transaction on the repository, or (gateway) a lease on ``subpath`` only.

        Exit 17 (another transaction open) and 16 (lease busy, ``temporary``) arrive as CvmfsError.
        ``retry_timeout`` lets the command itself retry a busy repository for that many seconds.
        ``template`` clones a directory to another as part of opening (``-T from=to``).
        """
        target = self.repository
        if subpath:
            target += "/" + _clean_path(subpath, "transaction sub-path")
        args = ["transaction"]
        if retry_timeout is not None:
            args += ["-t", str(retry_timeout)]
        if template is not None:
            source, dest = (_clean_path(p, "template path") for p in template)
            args += ["-T", f"{source}={dest}"]
        self._run(*args, target)

    def publish(self) -> None:
        """Publish the open transaction as a new revision. On failure the transaction stays open."""
        self._run("publish", self.repository)

    def abort(self, *, missing_ok: bool = False) -> bool:
        """``abort -f``: discard the open transaction. Returns False if none was open and ``missing_ok``."""
        try:
            self._run("abort", "-f", self.repository)
        except CvmfsError as exc:
            if missing_ok and exc.returncode == errno.EINVAL and "not in a transaction" in exc.stderr:
                return False
            raise
        return True

    def in_transaction(self) -> bool:
        """Whether this publisher has a transaction open (``cvmfs_server list`` says "in transaction")."""
        done = self._run("list")
        for line in done.stdout.splitlines():
            if line.startswith(self.repository + " ("):
                return "in transaction" in line
        raise CvmfsError(self._command("list"), 0, f"repository {self.repository} not listed:\n{done.stdout}")

    def revision(self) -> int:
        """The published revision: the ``S`` line of the manifest (fields end at the ``--`` line)."""
        try:
            text = self.manifest.read_bytes()
        except OSError as exc:
            # workaround: a real stratum 0 has no manifest under the mount; its spool's read-only
            # mount carries the revision as an attribute.
            spool = Path("/var/spool/cvmfs") / self.repository / "rdonly"
            done = subprocess.run(["attr", "-q", "-g", "revision", str(spool)], capture_output=True, check=False)
            if done.returncode == 0 and done.stdout.strip().isdigit():
                return int(done.stdout.strip())
            raise PublishError(f"cannot read the CVMFS manifest {self.manifest}: {exc}") from exc
        revision = parse_revision(text)
        if revision is None:
            raise PublishError(f"the CVMFS manifest {self.manifest} has no S (revision) line")
        return revision

    def delete(self, paths: Sequence[str], *, batch: int = 64) -> int:
        """Delete ``paths`` with ``ingest --delete``, ``batch`` paths per call (one per call on a gateway,
        which refuses more). Returns the number of calls made."""
        cleaned = [_clean_path(p, "delete path") for p in paths]
        if any(not p for p in cleaned):
            raise PublishError("refusing to delete the repository root")
        size = 1 if self.gateway else max(1, batch)
        calls = 0
        for start in range(0, len(cleaned), size):
            args = ["ingest"]
            for path in cleaned[start:start + size]:
                args += ["-d", path]
            self._run(*args, self.repository, what="cvmfs_server ingest --delete")
            calls += 1
        return calls

    def ingest(
        self,
        write_tar: Callable[[BinaryIO], None],
        base_dir: str,
        *,
        catalog: bool,
        delete: Sequence[str] = (),
        keep_ownership: bool = False,
    ) -> None:
        """Stream the tar that ``write_tar`` writes into ``ingest -t - -b base_dir``: one new revision.

        The command reads the stream through the guard of ``ducc.publish.ingest_guard``, started in a
        session of its own with the command: the stream counts as finished only once ``write_tar``
        returned and ducc sent the guard its end frame. If ducc stops before that, for whatever
        reason (``write_tar`` raised, or ducc itself was killed), the guard poisons the stream and
        the command can only fail: nothing is published.

        ``write_tar`` must write a plain tar and must not write the end-of-archive blocks before
        everything it streams has been verified: a tar reader may stop at them. If ``write_tar``
        raises, the command is given ``abort_grace`` seconds to fail on the poisoned stream before
        its process group is killed, any transaction it left is aborted, and the original exception
        is re-raised. If the command fails on its own (including closing its stdin early),
        CvmfsError carries its stderr.
        """
        base = _clean_path(base_dir, "ingest base dir")
        if not base:
            raise PublishError("refusing to ingest at the repository root")
        if self.gateway and delete:
            raise PublishError("a gateway refuses --delete together with a tar in one ingest")
        args = ["ingest", "-t", "-", "-b", base]
        if catalog:
            args.append("-c")
        if keep_ownership:
            args.append("-k")
        for path in delete:
            args += ["-d", _clean_path(path, "delete path")]
        command = self._command(*args, self.repository)
        log.debug("running %s", " ".join(command))
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            # The guard runs the command: a missing binary shows as the guard's exit 127.
            process = subprocess.Popen((*_GUARD, *command), stdin=subprocess.PIPE, stdout=out, stderr=err,
                                       cwd=self.cwd, env=self._environment(), start_new_session=True)
            assert process.stdin is not None
            sink = _Frames(process.stdin)
            try:
                write_tar(sink)  # type: ignore[arg-type]
                sink.end()
                process.stdin.close()
            except BrokenPipeError:
                # The command stopped reading: it failed (or was told to); its own words say why.
                sink.abandoned = True
                _close_quietly(process.stdin)
                code = self._wait(process)
                raise CvmfsError(command, code if code != 0 else -1,
                                 _words(_read(err), _read(out)) if code != 0
                                 else "ingest exited 0 without reading the whole stream") from None
            except BaseException:
                self._give_up(process, sink)
                raise
            code = self._wait(process)
            if code != 0:
                raise CvmfsError(command, code, _words(_read(err), _read(out)))

    # -- an ingest that must not publish -------------------------------------------------------

    def _wait(self, process: subprocess.Popen[bytes]) -> int:
        try:
            return process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.wait()
            raise CvmfsError(tuple(str(a) for a in process.args), -1,  # type: ignore[union-attr]
                             f"no answer within {self.timeout} s; killed") from None

    def _give_up(self, process: subprocess.Popen[bytes], sink: _Frames) -> None:
        """The stream ends without its end frame: the guard poisons it, and the command fails."""
        assert process.stdin is not None
        sink.abandoned = True
        _close_quietly(process.stdin)
        try:
            code: int | None = process.wait(timeout=self.abort_grace)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.wait()
            code = None
        if code == 0:
            log.error("cvmfs_server ingest finished a poisoned stream; the repository may hold a partial tree")
        # The real ingest aborts its own transaction when it fails; a killed one leaves it open.
        try:
            if self.abort(missing_ok=True):
                log.warning("aborted the transaction an interrupted ingest left open on %s", self.repository)
        except CvmfsError as exc:
            log.error("could not abort after an interrupted ingest: %s", exc)


def parse_revision(manifest: bytes) -> int | None:
    """The ``S`` line of a ``.cvmfspublished`` manifest (its fields end at the ``--`` line)."""
    for line in manifest.split(b"\n"):
        if line == b"--":
            break
        if line.startswith(b"S") and line[1:].strip().isdigit():
            return int(line[1:].strip())
    return None


def _words(stderr: str | bytes, stdout: str | bytes) -> str:
    """The command's own explanation: stderr, or the end of stdout where the script echoes there."""
    err = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    out = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout
    text = err.strip() or out.strip()
    return text[-_OUTPUT_TAIL:]


def _read(handle: IO[bytes]) -> bytes:
    handle.seek(0)
    return handle.read()


def _close_quietly(stream: IO[bytes]) -> None:
    try:
        stream.close()
    except (BrokenPipeError, OSError):
        pass


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the script and whatever it started
    except (ProcessLookupError, PermissionError):
        try:
            process.kill()
        except ProcessLookupError:
            pass
