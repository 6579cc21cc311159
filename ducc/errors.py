"""Every error ducc raises on purpose, in one tree.

Callers decide what to do from attributes, never from message text:

- ``temporary`` is True when the same operation may succeed later (a registry
  outage, a 429, a dropped connection); the queue retries those with backoff.
  Everything else is permanent: retrying would fail the same way.
- ``DuccError.__str__`` is a sentence for an operator; it never contains a
  secret.

::

    DuccError
    ├── InvalidReference          an image reference that cannot be parsed
    ├── InvalidDigest
    ├── InvalidManifest           a manifest, index or config that breaks the spec
    ├── InvalidPlatform           a platform outside the OCI grammar (``linux/..``, a control character)
    ├── NoMatchingPlatform        an index without the requested platform
    ├── RegistryError             the registry answered, but not with what we asked for
    │   ├── AuthenticationError   401/403 after trying every credential we have
    │   ├── NotFound              404 for a manifest, blob or repository
    │   └── RegistryUnavailable   5xx, 429, timeouts, refused connections (temporary)
    ├── DigestMismatch            bytes that do not hash to the digest that names them
    ├── UnsafeLayer               a tar entry that would land outside the root
    ├── UnsupportedLayer          a media type or compression ducc cannot apply
    ├── LimitExceeded             an image over DUCC_MAX_IMAGE_BYTES, a layer over DUCC_MAX_LAYER_ENTRIES, a path
    │                             deeper or longer than DUCC_MAX_PATH_DEPTH / DUCC_MAX_PATH_BYTES
    ├── LocalStorageError         the local filesystem refused a write (see ``storage_error``)
    │   └── StorageFull           no space or quota left (temporary)
    ├── WishlistError             a wishlist that does not validate (or cannot be read)
    ├── ThinImageNotPushed        the image is published, its thin image is not (temporary as its cause)
    ├── ThinImageRefused          a thin image whose layer URLs could name no CVMFS repository (nothing done)
    ├── ImageRefused              an admission policy refused the image before any layer was fetched (``ducc.admission``)
    ├── JobCancelled              a job stopped on request (``ducc cancel``, the API); nothing half published
    ├── ServiceUnavailable        Redis (queue, job status) cannot be reached (temporary)
    ├── StateDirectoryInUse       another ``ducc serve`` runs with the same state directory
    └── PublishError              the publisher could not make the image visible
        ├── RepositoryUnusable    a repository root that cannot be created or written
        ├── CvmfsError            a cvmfs_server command failed (its command, exit code, stderr)
        ├── LeaseLost             the repository lease lapsed under a writer, which stopped before writing (temporary)
        └── TreeMissing           a layer or flat root was removed under a conversion (temporary)
"""

from __future__ import annotations

import errno
import re


class DuccError(Exception):
    """Base class; ``temporary`` says whether a retry may succeed."""

    temporary: bool = False


class InvalidReference(DuccError, ValueError):
    pass


class InvalidDigest(DuccError, ValueError):
    pass


class InvalidManifest(DuccError, ValueError):
    pass


class InvalidPlatform(DuccError, ValueError):
    """A platform that is not ``os/architecture[/variant]`` of lowercase names (``ducc.model.manifest``)."""


class NoMatchingPlatform(DuccError):
    pass


class RegistryError(DuccError):
    """The registry answered with something other than what was asked for."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationError(RegistryError):
    pass


class NotFound(RegistryError):
    pass


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or asked us to come back later."""

    temporary = True

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class DigestMismatch(DuccError):
    """Content that does not hash to the digest that names it; nothing built from it is published."""

    def __init__(self, what: str, expected: object, actual: object) -> None:
        super().__init__(f"{what}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class UnsafeLayer(DuccError):
    """A layer entry that would write outside the root, or through a symlink."""


class UnsupportedLayer(DuccError):
    pass


class LimitExceeded(DuccError):
    """An image that would write more than the operator allows (``ducc.unpack.limits``); nothing of it is
    published, and retrying would refuse it again."""


class WishlistError(DuccError, ValueError):
    pass


class PublishError(DuccError):
    pass


class RepositoryUnusable(PublishError):
    """The repository root cannot be created, is not a directory, or cannot be written; or the CVMFS
    repository named cannot be used as given (``REPO[/subdir]`` with ``..`` or ``:``)."""


class JobCancelled(DuccError):
    """A job was cancelled (``by`` says who) and its conversion stopped at a cancel point (``stage``).

    Raised by the conversion's cancel check at the points ``ducc.cancel`` lists, never by a progress
    report, so it unwinds like any failure: staged trees are discarded and an open transaction is
    aborted. Never retried.
    """

    def __init__(self, by: str, stage: str = "") -> None:
        super().__init__(f"cancelled by {by}" + (f" while {stage}" if stage else ""))
        self.by = by
        self.stage = stage


class ServiceUnavailable(DuccError):
    """A service ducc needs (Redis: the queue, locks and job status) cannot be reached."""

    temporary = True


class StateDirectoryInUse(DuccError):
    """Another ``ducc serve`` holds the state directory (its embedded Redis, its schedule)."""


class ThinImageNotPushed(DuccError):
    """The flat root and record are published, but the thin image could not be pushed.

    ``temporary`` is the cause's: a retry pushes only the thin image (the flat stays published).
    The message starts with ``published, thin image not pushed:`` and then says why.
    """

    def __init__(self, why: object, *, temporary: bool = False) -> None:
        super().__init__(f"published, thin image not pushed: {why}")
        self.temporary = temporary

    @classmethod
    def because(cls, cause: DuccError) -> ThinImageNotPushed:
        return cls(cause, temporary=cause.temporary)


class ThinImageRefused(DuccError):
    """A thin image was asked for, but nothing names the CVMFS repository its layer URLs must point
    into (``--cvmfs-repo``, the wishlist's ``cvmfs_repo``, ``DUCC_THIN_CVMFS_REPO``), or the name given
    is not one. Raised before any work: the image is not converted either. Never retried."""


class ImageRefused(DuccError):
    """An admission policy (``ducc.admission``) refused the image: nothing of it was downloaded beyond
    its manifest and config, nothing published. ``policy`` names the policy (the setting that made it),
    ``why`` what it found. Permanent: the same image would be refused again."""

    def __init__(self, reference: object, policy: str, why: str) -> None:
        super().__init__(f"{reference}: refused by {policy}: {why}")
        self.reference = str(reference)
        self.policy = policy
        self.why = why

    def __reduce__(self) -> tuple[type[ImageRefused], tuple[str, str, str]]:
        return type(self), (self.reference, self.policy, self.why)


class LocalStorageError(DuccError):
    """The local filesystem refused a write: a name it cannot store, a read-only or broken disk."""

    def __init__(self, message: str, *, errno_code: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_code


class StorageFull(LocalStorageError):
    """No space or no quota left; freeing space (or a later attempt elsewhere) may succeed."""

    temporary = True


STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_error(exc: OSError, what: str) -> LocalStorageError | None:
    """The typed error for a local write that failed with ``exc`` while doing ``what``; None if ``exc``
    is not a filesystem error (no errno: a decompressor's complaint about its input, for example)."""
    if exc.errno is None:
        return None
    reason = exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))
    if exc.errno in STORAGE_FULL:
        return StorageFull(f"{what}: {reason} (local storage full)", errno_code=exc.errno)
    if exc.errno in (errno.ENAMETOOLONG, errno.EILSEQ):
        return LocalStorageError(f"{what}: the local filesystem refuses this name: {reason}", errno_code=exc.errno)
    return LocalStorageError(f"{what}: {reason}", errno_code=exc.errno)


class CvmfsError(PublishError):
    """``cvmfs_server`` exited non-zero (or was killed).

    ``str()`` is one line: what failed, the exit code and the command's own reason (the line of its
    output that says why, e.g. swissknife's assertion or "Repository … is not in a transaction").
    ``stderr`` keeps everything the command said, and ``detail`` is that with the command line: the
    job timeline and the log get ``detail``, a user's terminal the one line.

    ``temporary`` for a busy lease (a gateway sub-path held by another writer): retrying later may
    succeed. ``transaction`` says so with exit 16 (EBUSY); ``ingest``, which opens its transaction
    itself, exits 1 ("Impossible to start a transaction") after the same words from the transaction,
    "lease path busy". Everything else (a transaction already open, a broken stream) is not.
    """

    def __init__(self, command: tuple[str, ...], returncode: int, stderr: str, *, what: str | None = None) -> None:
        self.what = what or "cvmfs_server " + (command[1] if len(command) > 1 else "")
        self.reason = reason_line(stderr)
        super().__init__(f"{self.what} failed (exit {returncode}): {self.reason}")
        self.command = command
        self.returncode = returncode
        self.stderr = stderr
        self.temporary = returncode == 16 or "lease path busy" in stderr

    @property
    def detail(self) -> str:
        """Everything: the one line, the command line and the command's whole output."""
        return f"{self}\n[command: {' '.join(self.command)}]\n{self.stderr.strip()}"


# Lines of cvmfs_server's output that never say why it failed: shell noise of the real script, the
# restart of its FUSE client, progress, and the generic last words that follow the real reason.
_NOISE = ("eval: [[: not found", "eval: lsusb: not found", "CernVM-FS: ", "Failed to set requested number",
          "Using auto tag", "Swissknife Ingest:", "Waiting for upload", "Executed Command:", "Processing changes")
_GENERIC = ("Synchronization failed", "Aborted", "Impossible to start a transaction")
_REASON_MAX = 300
_ASSERTION = re.compile(r"^(?P<prog>[\w.-]+): (?:\S*/)?(?P<where>[\w.-]+:\d+): .*?(?P<what>Assertion .*)$")


def reason_line(output: str) -> str:
    """The one line of a ``cvmfs_server`` output that says why it failed.

    The first specific line (an assertion, "another transaction is already open", a refusal), else
    the generic one ("Synchronization failed"), else "(no output)"; the swissknife command line that
    the script echoes after "Executed Command:" is never it. At most 300 characters."""
    lines = []
    for raw in output.splitlines():
        line = raw.strip()
        if line.startswith("Executed Command:"):
            break  # what follows is the swissknife command line
        if line and not any(noise in line for noise in _NOISE):
            lines.append(line)
    specific = [line for line in lines if not any(line.startswith(g) for g in _GENERIC)]
    chosen = specific[0] if specific else (lines[-1] if lines else "(no output)")
    assertion = _ASSERTION.match(chosen)
    if assertion:  # "prog: /build/path/file.cc:171: <the C++ signature>: Assertion `x' failed."
        chosen = f"{assertion['prog']}: {assertion['where']}: {assertion['what']}"
    if len(chosen) > _REASON_MAX:
        chosen = chosen[:_REASON_MAX - 1] + "…"
    return chosen


class LeaseLost(PublishError):
    """The writer's lease on the repository lapsed (Redis unreachable longer than the lease, or the lease
    taken over): another writer may hold it now, so this one stopped before its next visible change.
    A retry takes the lease again and publishes."""

    temporary = True


class TreeMissing(PublishError):
    """A layer or flat root the conversion was about to record was removed meanwhile (by garbage
    collection where it could not see the conversion's reservation); a retry publishes it again."""

    temporary = True
