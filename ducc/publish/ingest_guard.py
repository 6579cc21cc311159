"""The guard between ducc and ``cvmfs_server ingest``: an ingest stream is finished only when ducc says so.

A tar stream that simply stops between two entries is a *complete* archive to libarchive (it
accepts a missing end-of-archive marker). If ducc is killed while it streams a tree into
``ingest -t -``, the command's stdin reaches EOF and it would publish the entries read so far.
Nothing ducc does in its own process can prevent that (a SIGKILL leaves it no last word), and
``PR_SET_PDEATHSIG`` on the command is not enough either: the real ``cvmfs_server`` is a shell
script whose children read the pipe.

So ducc does not write into the command's stdin. It starts this guard (in the command's session,
apart from ducc's own, so signals meant for ducc do not reach it) with the command line as its
arguments; the guard starts the command and forwards what ducc sends as frames:

- a frame is a 4-byte big-endian length ``n`` followed by ``n`` bytes of the tar stream;
- a frame of length 0 is the end: ducc has written and verified the whole stream.

The guard moves the bytes with ``splice(2)`` (pipe to pipe, no copy through user space) and counts
them, so it knows the exact offset the command has been given. If its input ends without the end
frame (ducc died, or gave up after a failed check), it poisons the stream at that offset (see
``poison``) so that the command can only fail, publishing nothing; the real command aborts its own
transaction then, and the next writer's ``abort -f`` covers a command that was killed. The guard
ignores the signals of a terminal or a service manager's stop (INT, TERM, HUP, QUIT): only SIGKILL
ends it, and ducc only sends that to the whole group, command included.

The guard also keeps what ducc hands it (``pass_fds``: the writer's flock) open until the command
has ended, and only the guard: the command gets none of it. So a ducc killed while ``ingest`` still
commits (after its end frame) or while ``publish`` runs does not free the repository for the next
writer, whose ``abort -f`` would meet a live command; the next writer waits for the command instead.
Every ``cvmfs_server`` call runs under the guard for that reason; with ``--no-input`` the command's
stdin is ``/dev/null`` and the guard only waits.

The guard's exit code is the command's (128 + N if a signal N ended it). It runs as a script
(``python -I -S ingest_guard.py [--no-input] -- COMMAND...``) and imports nothing but the standard
library, so it starts in milliseconds.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import termios

END = b"\0\0\0\0"  # the end frame
HEADER = 4
MAX_FRAME = (1 << 32) - 1
_BLOCK = 512
_POISON_HEADERS = 4
_PIPE_SIZE = 1 << 20
# A terminal's or a service manager's stop: the guard ignores them, the command it starts gets them back.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def frame_header(size: int) -> bytes:
    """The header of a data frame of ``size`` bytes (1 … MAX_FRAME)."""
    if not 0 < size <= MAX_FRAME:
        raise ValueError(f"a data frame holds 1 to {MAX_FRAME} bytes, not {size}")
    return size.to_bytes(HEADER, "big")


def poison(offset: int) -> bytes:
    """What makes a tar stream already ``offset`` bytes long one that no tar reader can finish.

    Fill up to the next 512-byte block with non-zero bytes, then a few valid headers each announcing
    a 1 GiB file, then half a block. Wherever the reader stands — between entries, inside a header
    or inside a file's data — it next meets either a header whose data never comes or a truncated
    block: "Truncated tar archive", a fatal error.
    """
    import tarfile  # only a stream being poisoned pays for it

    info = tarfile.TarInfo("ducc-aborted-this-stream")
    info.size = 1 << 30
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    return b"\xff" * (-offset % _BLOCK) + header * _POISON_HEADERS + header[: _BLOCK // 2]


def _read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd``, or fewer if it ends first."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def forward(source: int, sink: int) -> tuple[bool, int]:
    """Move frames from ``source`` to ``sink`` until the end frame or the end of ``source``.

    Only whole 512-byte blocks reach ``sink`` before the end frame, also when ducc stops inside a frame:
    bytes are spliced only as far as whole blocks are already waiting in ``source``, and the start of a
    block not complete yet waits here. So a stream that stops is always cut at a block boundary, never
    inside a tar header (the real swissknife ingest of 2.12.0 hangs for good on a header completed by
    the poison's filler, instead of failing). Returns (whether the end frame arrived, bytes given to
    ``sink``). BrokenPipeError if the reader of ``sink`` went away (the command stopped reading: it
    failed, or exits on its own)."""
    offset = 0
    pending = b""  # the start of a block not complete yet
    while True:
        header = _read_exactly(source, HEADER)
        if len(header) < HEADER:
            return False, offset
        remaining = int.from_bytes(header, "big")
        if remaining == 0:
            _write_all(sink, pending)
            return True, offset + len(pending)
        while remaining:
            ready = _waiting(source)
            gap = -(offset + len(pending)) % _BLOCK  # to the next block boundary (after a short splice)
            if pending or gap or remaining < _BLOCK or ready < _BLOCK:
                chunk = os.read(source, min(remaining, gap or _BLOCK))  # waits for more to arrive
                if not chunk:
                    return False, offset  # cut inside a frame
                pending += chunk
                remaining -= len(chunk)
                if (offset + len(pending)) % _BLOCK == 0:
                    _write_all(sink, pending)
                    offset += len(pending)
                    pending = b""
                continue
            size = min(remaining, ready)
            moved = os.splice(source, sink, size - size % _BLOCK)  # all of it is in the pipe already
            offset += moved
            remaining -= moved


def _waiting(fd: int) -> int:
    """How many bytes can be read from ``fd`` (a pipe) without waiting."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(argv: list[str]) -> int:
    no_input = argv[:1] == ["--no-input"]
    if no_input:
        argv = argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: ingest_guard.py [--no-input] -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    try:
        # The command gets the default dispositions back (subprocess restores them; SIG_IGN of the
        # signals above would be inherited through exec, so they are reset here explicitly). It gets
        # none of the guard's other descriptors (close_fds): the lock stays with the guard.
        command = subprocess.Popen(argv, stdin=subprocess.DEVNULL if no_input else subprocess.PIPE,
                                   preexec_fn=_default_signals, close_fds=True)
    except OSError as exc:
        print(f"{argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127
    if no_input:
        code = command.wait()
        return code if code >= 0 else 128 - code
    assert command.stdin is not None
    sink = command.stdin.fileno()
    for pipe in (sys.stdin.fileno(), sink):
        _widen(pipe)
    complete, offset = False, 0
    try:
        complete, offset = forward(sys.stdin.fileno(), sink)
        if not complete:
            print(f"ducc's stream ended without its end frame after {offset} bytes: poisoned, so that "
                  "nothing of it is published", file=sys.stderr, flush=True)
            _write_all(sink, poison(offset))
    except BrokenPipeError:
        pass  # the command stopped reading; its exit code and its own words say why
    try:
        command.stdin.close()
    except BrokenPipeError:
        pass
    code = command.wait()
    return code if code >= 0 else 128 - code


def _widen(pipe: int) -> None:
    """Let the pipe hold 1 MiB (the unprivileged maximum by default), not 64 KiB: fewer, larger moves."""
    try:
        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # not a pipe, or a lower limit: the default works, a little slower


def _default_signals() -> None:
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
