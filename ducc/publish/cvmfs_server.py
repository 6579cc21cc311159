"""The edge that runs ``cvmfs_server`` (CernVM-FS 2.12) on a stratum 0 or gateway publisher.

Every method runs one command and either returns after exit 0 or raises CvmfsError with the
command, its exit code and its own words (stderr, or stdout where the real script echoes its
refusal there, e.g. publish's "Repository … is not in a transaction"). Nothing is retried here:
the caller decides, from ``error.temporary``. Commands run with the current directory outside
the mount (``publish`` and ``ingest`` refuse to run from inside it) and with stdin closed, so no
confirmation prompt can ever wait for an answer; ``ingest`` reads the tar stream, through the guard
of ``ducc.publish.ingest_guard``.

Every call goes through one runner (``_start``/``_finish``): the command runs under the guard of
``ducc.publish.ingest_guard`` in a session of its own (a Ctrl-C or a service stop meant for ducc never
reaches ``cvmfs_server publish``), its output goes to files, never to pipes (``publish``, ``abort``
and ``ingest`` restart the ``cvmfs2`` client, which may inherit them and keep them open for good),
ducc waits for the guard's exit with a deadline, and on timeout the whole process group is killed.
While ducc holds the repository (``holding``), the guard is handed the writer's lock and keeps it
until the command has ended, even if ducc is killed first.

Paths handed to the command (base dir, delete paths, lease sub-paths) are relative to the
repository root and must survive the real script, which expands them unquoted: whitespace and
glob characters are refused here before anything runs. ``ingest`` joins its ``-b`` and ``-d``
arguments with ``:`` and splits them again, so a path with ``:`` would name another path: never
given to ``-b`` or ``-d``; such a path is deleted with ``transaction`` + remove + ``publish``.

The published revision is read where the server keeps it: the ``user.revision`` attribute of
``/var/spool/cvmfs/<repo>/rdonly`` (what ``cvmfs_server`` reads itself; also on a gateway publisher),
else the ``S`` line of the stratum 0's ``/srv/cvmfs/<repo>/.cvmfspublished``. ``/cvmfs/<repo>``
shows neither.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from ducc.errors import CvmfsError, PublishError, reason_line
from ducc.publish import ingest_guard
from ducc.tree import remove_tree

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNSAFE = re.compile(r"[\s*?\[\]]")
_REVISION_XATTR = "user.revision"
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


def _ingest_path(path: str, what: str) -> str:
    """``path`` for ``ingest -b``/``-d``: also without ``:``, which ingest splits paths on."""
    cleaned = _clean_path(path, what)
    if ":" in cleaned:
        raise PublishError(f"{what} {path!r} contains ':', which cvmfs_server ingest takes as a separator "
                           "between paths")
    return cleaned


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
    the open changes) can be read. The revision is the ``user.revision`` attribute of ``spool/rdonly``
    (default ``/var/spool/cvmfs/<repository>``), else the ``S`` line of ``manifest`` (default
    ``/srv/cvmfs/<repository>/.cvmfspublished``). ``gateway`` says the repository publishes through a
    gateway, where ``ingest`` takes one ``--delete`` at a time.
    """

    def __init__(
        self,
        repository: str,
        *,
        binary: str = "cvmfs_server",
        mount: Path | None = None,
        manifest: Path | None = None,
        spool: Path | None = None,
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
        self.manifest = manifest if manifest is not None else Path("/srv/cvmfs") / repository / ".cvmfspublished"
        self.spool = spool if spool is not None else Path("/var/spool/cvmfs") / repository
        self._held = threading.local()  # the lock this thread holds the repository with (``holding``)
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

    @contextmanager
    def holding(self, lock_fd: int) -> Iterator[None]:
        """While this thread holds the repository with the flock ``lock_fd``: every command started meanwhile
        keeps the lock (through its guard) until it has ended, even if ducc does not live that long."""
        self._held.fd = lock_fd
        try:
            yield
        finally:
            self._held.fd = None

    def _start(self, command: tuple[str, ...], out: IO[bytes], err: IO[bytes], *,
               stream: bool = False) -> subprocess.Popen[bytes]:
        """The runner's first half: ``command`` under the guard, in a session of its own, output to files."""
        log.debug("running %s", " ".join(command))
        lock = getattr(self._held, "fd", None)
        guard = _GUARD if stream else (*_GUARD[:-1], "--no-input", "--")
        return subprocess.Popen((*guard, *command), stdin=subprocess.PIPE if stream else subprocess.DEVNULL,
                                stdout=out, stderr=err, cwd=self.cwd, env=self._environment(), start_new_session=True,
                                pass_fds=(lock,) if lock is not None else ())

    def _finish(self, process: subprocess.Popen[bytes], command: tuple[str, ...], out: IO[bytes],
                err: IO[bytes], what: str | None, *, expected: int | None = None) -> tuple[str, str]:
        """The runner's second half: wait (``timeout``; then the whole group is killed), raise CvmfsError
        unless the command exited 0; (stdout, stderr) otherwise. The guard's exit 127 is a missing binary."""
        try:
            code = process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.wait()
            error = CvmfsError(command, -1, f"no answer within {self.timeout} s; killed", what=what)
            log.debug("%s", error.detail)
            raise error from None
        except BaseException:
            # Interrupted (Ctrl-C): the command, in its own session, goes on. Whatever ducc does next
            # (``abort -f``, say) must not meet it half-way: let it end first.
            log.warning("interrupted: waiting for %s to finish", " ".join(command[:2]))
            try:
                process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                process.wait()
            raise
        stdout, stderr = (_read(f).decode(errors="replace") for f in (out, err))
        if code != 0:
            error = CvmfsError(command, code, _words(stderr, stdout), what=what)
            if code != expected:  # the full text, with -v; the error itself is one line (a worker logs
                log.debug("%s", error.detail)  # and records ``detail`` with the job)
            raise error
        return stdout, stderr

    def _run(self, *args: str, what: str | None = None, expected: int | None = None) -> str:
        """Run one command without input; its stdout. A failure with exit code ``expected`` (one the caller
        handles) is not logged."""
        command = self._command(*args)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = self._start(command, out, err)
            return self._finish(process, command, out, err, what, expected=expected)[0]

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
            self._run("abort", "-f", self.repository, expected=errno.EINVAL if missing_ok else None)
        except CvmfsError as exc:
            if missing_ok and exc.returncode == errno.EINVAL and "not in a transaction" in exc.stderr:
                return False
            raise
        return True

    def in_transaction(self) -> bool:
        """Whether this publisher has a transaction open: the flag ``cvmfs_server`` itself tests
        (``<spool>/in_transaction.lock``), else what ``cvmfs_server list`` says (which, while another
        repository on the machine is being created or removed, may not list this one)."""
        if self.spool.is_dir():
            return (self.spool / "in_transaction.lock").is_file()
        stdout = self._run("list")
        for line in stdout.splitlines():
            if line.startswith(self.repository + " ("):
                return "in transaction" in line
        raise CvmfsError(self._command("list"), 0, f"repository {self.repository} not listed:\n{stdout}")

    def revision(self) -> int:
        """The published revision: the ``user.revision`` attribute of the read-only mount under the spool
        directory (what ``cvmfs_server`` reads), else the ``S`` line of the stratum 0's manifest."""
        rdonly = self.spool / "rdonly"
        try:
            value = os.getxattr(rdonly, _REVISION_XATTR)
        except OSError as xattr_error:
            try:
                text = self.manifest.read_bytes()
            except OSError as exc:
                raise PublishError(f"cannot read the revision of {self.repository}: neither the {_REVISION_XATTR} "
                                   f"attribute of {rdonly} ({xattr_error.strerror}) nor the manifest {self.manifest} "
                                   f"({exc.strerror})") from exc
            revision = parse_revision(text)
            if revision is None:
                raise PublishError(f"the CVMFS manifest {self.manifest} has no S (revision) line") from None
            return revision
        if not value.strip().isdigit():
            raise PublishError(f"the {_REVISION_XATTR} attribute of {rdonly} is not a number: {value[:40]!r}")
        return int(value)

    def delete(self, paths: Sequence[str], *, batch: int = 64) -> int:
        """Delete ``paths`` with ``ingest --delete``, ``batch`` paths per call (one per call on a gateway,
        which refuses more). Paths with ``:`` (which ingest would split) go together in one
        ``transaction`` … ``publish`` instead. Returns the number of publishing calls made."""
        cleaned = [_clean_path(p, "delete path") for p in paths]
        if any(not p for p in cleaned):
            raise PublishError("refusing to delete the repository root")
        plain = [p for p in cleaned if ":" not in p]
        size = 1 if self.gateway else max(1, batch)
        calls = 0
        for start in range(0, len(plain), size):
            args = ["ingest"]
            for path in plain[start:start + size]:
                args += ["-d", path]
            self._run(*args, self.repository, what="cvmfs_server ingest --delete")
            calls += 1
        colon = [p for p in cleaned if ":" in p]
        if colon:
            self._delete_in_transaction(colon)
            calls += 1
        return calls

    def _delete_in_transaction(self, paths: list[str]) -> None:
        """``transaction`` (on a gateway: leased on the paths' common parent), remove, ``publish``;
        ``abort -f`` if anything fails."""
        lease = None
        if self.gateway:
            common: list[str] = []
            for level in zip(*(p.split("/")[:-1] for p in paths), strict=False):
                if len(set(level)) != 1:
                    break
                common.append(level[0])
            lease = "/".join(common) or None
        self.transaction(lease)
        try:
            for path in paths:
                target = self.mount / path
                if target.is_dir() and not target.is_symlink():
                    remove_tree(target)
                elif os.path.lexists(target):
                    target.unlink()
            self.publish()
        except BaseException:
            try:
                self.abort(missing_ok=True)
            except CvmfsError as exc:
                log.error("could not abort the failed delete on %s: %s", self.repository, exc)
            raise

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
        base = _ingest_path(base_dir, "ingest base dir")
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
            args += ["-d", _ingest_path(path, "delete path")]
        command = self._command(*args, self.repository)
        with ExitStack() as files:
            out, err = (files.enter_context(tempfile.TemporaryFile()) for _ in range(2))
            # The guard runs the command: a missing binary shows as the guard's exit 127.
            process = self._start(command, out, err, stream=True)
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
                self._finish(process, command, out, err, None)
                raise CvmfsError(command, -1, "ingest exited 0 without reading the whole stream") from None
            except BaseException:
                self._give_up(process, sink)
                raise
            self._finish(process, command, out, err, None)

    # -- an ingest that must not publish -------------------------------------------------------

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
    """The command's own explanation: stderr, or the end of stdout where the script echoes there
    (``publish``'s "Repository … is not in a transaction"; stderr then holds only shell noise)."""
    err = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    out = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout
    text = err.strip() if reason_line(err) != "(no output)" else ""
    if not text:
        text = (err.strip() + "\n" + out.strip()).strip()
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


def diagnose(server: CvmfsServer) -> list[tuple[str, str | None]]:
    """What ``ducc doctor`` checks on a publisher, in order: (what was checked, None if it holds, else
    what is wrong in one line). The command, the mount, the revision, and a throw-away transaction
    opened and aborted (never one already open: that is reported, not aborted)."""
    results: list[tuple[str, str | None]] = []
    path = (server.env or os.environ).get("PATH")
    found = server.binary if os.sep in server.binary else shutil.which(server.binary, path=path)
    if found is None or not os.access(found, os.X_OK):
        results.append((f"command {server.binary}", "not found or not executable"))
        return results
    results.append((f"command {found}", None))
    if not server.mount.is_dir():
        results.append((f"mount {server.mount}", "missing: is the repository created on this publisher "
                        f"(cvmfs_server mkfs) and mounted (cvmfs_server mount {server.repository})?"))
    else:
        results.append((f"mount {server.mount}", None))
    try:
        results.append((f"revision {server.revision()}", None))
    except PublishError as exc:
        results.append(("revision", str(exc)))
    try:
        server.transaction()
    except CvmfsError as exc:
        why = ("a transaction is already open (a writer at work, or one left behind: "
               f"cvmfs_server abort -f {server.repository})") if exc.returncode == errno.EEXIST else str(exc)
        results.append(("transaction opened and aborted", why))
        return results
    try:
        server.abort()
    except CvmfsError as exc:
        results.append(("transaction opened and aborted", f"opened, but the abort failed: {exc}"))
        return results
    results.append(("transaction opened and aborted", None))
    return results
