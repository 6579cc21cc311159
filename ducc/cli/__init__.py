"""The ``ducc`` command: a thin layer over the library (``ducc.wiring`` wires it from settings).

One module per verb group registers its own sub-commands (``register(sub)``): ``conversion``
(convert, sync, check-wishlist), ``processes`` (serve, worker, beat, web), ``jobs`` (submit, status,
cancel, jobs) and ``repository`` (list, inspect, rm, gc, doctor). What they share: ``arguments``
(argument types, the repository options, the collaborators a command builds), ``progress_line`` (the live
line on a terminal) and ``exits`` (exit statuses, and the one line each failure prints). A new verb goes
into the module of its group, registered there.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import NoReturn

from ducc import __version__
from ducc.cli import conversion, jobs, processes, repository
from ducc.cli.exits import EXIT_INTERRUPTED, EXIT_USAGE, fail, failure, one_line, reader_gone
from ducc.logs import setup_logging
from ducc.publish import backends
from ducc.settings import Settings

log = logging.getLogger("ducc")

EXAMPLES = """\
examples:
  ducc convert ubuntu:24.04 --root /srv/cvmfs/unpacked
  ducc convert 127.0.0.1:5000/team/app:1.2 ghcr.io/org/tool:latest --platform linux/arm64
  ducc check-wishlist wishlist.yaml
  ducc sync wishlist.yaml --root /srv/cvmfs/unpacked
  ducc list --root /srv/cvmfs/unpacked
  ducc serve --root /srv/cvmfs/unpacked --wishlist wishlist.yaml   # everything, one machine
  ducc submit ubuntu:24.04 && ducc status ubuntu:24.04 --wait 600
  ducc cancel JOB_ID
  ducc rm 127.0.0.1:5000/team/app:old --root /srv/cvmfs/unpacked
  ducc gc --root /srv/cvmfs/unpacked --dry-run

Settings come from DUCC_* environment variables; see the README.

exit status (every failure is one line on stderr: "ducc: <what>: <why>"):
  0   done
  1   the work failed: an image did not convert, a job failed or was cancelled,
      nothing found for what was asked
  2   usage or configuration: a bad argument or setting, a wishlist that is missing
      or invalid, a repository root that cannot be created or written
  69  a service is unavailable: Redis cannot be reached, or another ducc serve
      holds the state directory
  75  ducc status: the job has not finished yet
  130 interrupted
  141 the reader of its output went away (ducc list | head -1), quietly, as other tools
"""

# The verb groups, in the order ``ducc --help`` lists their commands.
GROUPS = (conversion, processes, jobs, repository)


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C: stop every registry transfer at once (threads blocked on a slow registry wake up), then
    unwind as Python's own handler does."""
    transfer = sys.modules.get("ducc.registry.transfer")  # not imported here: a signal handler must not import
    if transfer is not None:
        transfer.abort_all()
    raise KeyboardInterrupt


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other failure (``ducc: <what>: <why>``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ducc").strip()
        hint = f"ducc {command} --help" if command else "ducc --help"
        self.exit(EXIT_USAGE, f"ducc: {command + ': ' if command else ''}{one_line(message)} (see {hint})\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ducc",
        description="Convert container images from Docker/OCI registries into unpacked, deduplicated "
        "root filesystems in a CernVM-FS repository (or any directory).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ducc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure a user can cause ends as one line on stderr and an exit status
    of the table in ``EXAMPLES`` (``-v`` also logs the traceback, for reporting a bug)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        return fail(exc, EXIT_USAGE)
    setup_logging(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else settings.log_level)
    settings = backends.apply_options(args, settings)  # --root, --cvmfs-repo: they choose the backend
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupted)  # the service's processes put their own in place
    try:
        code = int(args.func(args, settings))
        sys.stdout.flush()  # a reader that went away is found here, not at exit
        return code
    except BrokenPipeError:
        return reader_gone()
    except KeyboardInterrupt:
        print("ducc: interrupted; nothing half-published (staging is cleaned on the next run)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        log.debug("the command failed", exc_info=True)
        return fail(*failure(exc, settings))

