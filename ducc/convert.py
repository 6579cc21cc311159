"""The use case: one image reference → published in the repository.

``Converter.run`` is the list of its steps, each a method with one input and one output:

    resolve(request)        -> Resolved      the tag's current digest (one HEAD), and its record if current
    fetch(resolved)         -> Image         manifest (the platform's, from an index) and config, verified
    admit(image)            -> None          every admission policy; ``ImageRefused`` stops here
    unpack(image)           -> StagedLayers  every layer not yet published, fetched, verified, published
    flatten(image, layers)  -> StagedFlat    the flat root built in staging (or reused)
    commit(image, flat)     -> Published     tag moved, record written, in one transaction
    thin(image, record)     -> result        the thin image pushed, when the request names one

What each step promises:

0. recover   what a crashed writer left (``Committer.recover``), in every run: its
             staging (never a live one's), and on CVMFS a transaction it left open.
1. resolve   the tag's current digest (one HEAD). If the record in ``.metadata``
             matches it and its flat root exists, stop: nothing to do (no policy is
             asked again about an image already published).
2. fetch     manifest (platform chosen from an index), config; both verified.
             No layer blob is read.
3. admit     the admission policies the composition root built from settings
             (``ducc.admission``: ``DUCC_MAX_LAYERS``, ``DUCC_MAX_COMPRESSED_BYTES``),
             in order, for ``ducc convert``, ``ducc sync`` and the service alike.
             A refusal is ``ImageRefused`` (permanent): nothing was downloaded beyond
             the manifest and config, nothing is published. This is where a new
             policy goes (a signature check, a registry allow-list): it judges the
             ``Image`` and raises, it never needs the layers.
4. unpack    every layer not yet published, in parallel, streamed from the
             registry (or the blob cache) through digest and diff_id checks into
             a staging directory. The first layer that fails stops its siblings
             at their next read; only once every layer is verified are they
             published, base first (hardlinks to lower layers resolved then).
5. flatten   unless a flat root with this config digest exists: merge the
             layers into a staged flat root, apply the flat hooks (``.singularity.d``).
             Layers published by this conversion are read where their publisher
             says (the staged copy, for CVMFS), the others from the repository.
6. commit    publish the flat root, point the tag at it, then write the record (last).
             Then every store beside the repository (``sinks``) is told; a store that
             fails is a progress line, never the conversion's failure, and is told
             again whenever the image is found unchanged (docs/podman.md).
7. thin      only if the request names a thin reference (docs/design.md §7): build the
             thin image from the verified manifest and config (its layer URLs
             name ``cvmfs_repo``, else the request's ``thin_repo``, else
             ``thin_cvmfs_repo``; with none, ``ThinImageRefused`` before step 1),
             push it through the registry API, then add its reference and
             digest to the record.
             It runs after the image is published and never unpublishes it: a
             failure is ``ThinImageNotPushed`` (temporary when its cause is), and
             a later run of the same request, finding the record current but
             without that thin image, fetches and admits the image again and
             pushes only the thin image.

Progress stages (``Progress.stage``; the service's job timeline and its tests read
them): resolving, unchanged, fetching, unpacking, flattening, publishing, published,
thin. Admission reports no stage of its own: a refusal is the job's failure.

A cancelled job stops only at the cancel points ``ducc.cancel`` lists, never inside a
progress report: up to the moment the tag moves it publishes nothing; after that the
image stays published and a cancel only skips the thin push.

Beside garbage collection: before it looks whether any layer or the flat root
exists, the conversion reserves them all in its staging directory
(``Reservations.reserve``), so a sweep keeps them while it runs; and in its final
transaction, before the tag moves, it checks that every layer and the flat
root are there (a sweep on a host that cannot see its reservations could have
removed them): if one is missing it stops with a temporary error, and the
retry publishes it again. A record never lists a layer or flat that is gone.

A failure at any step leaves no part of this image visible: staged trees are
discarded, and a layer is published only after its whole stream was verified.
The layers an image writes are held to the operator's limits while they stream
(``ducc.unpack.limits``): over them, the image is refused with ``LimitExceeded``.
Registry requests are retried by the registry client (one retry policy, in the
transport); the converter never retries around it. A local write that fails
(a full disk) stops the conversion at once with a typed error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from ducc import __version__, layout
from ducc.admission import Policy, admit
from ducc.cache import BlobCache, CacheWriter
from ducc.cancel import CancelCheck, never
from ducc.errors import (
    DuccError,
    InvalidManifest,
    InvalidPlatform,
    InvalidReference,
    JobCancelled,
    LimitExceeded,
    LocalStorageError,
    NoMatchingPlatform,
    RegistryUnavailable,
    ThinImageNotPushed,
    ThinImageRefused,
    TreeMissing,
    UnsafeLayer,
    UnsupportedLayer,
    storage_error,
)
from ducc.model.digest import Digest
from ducc.model.image import Image
from ducc.model.limits import Limits
from ducc.model.manifest import DEFAULT_PLATFORM, Descriptor, ImageConfig, Index, Manifest, Platform
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest, ConversionResult
from ducc.progress import LogProgress, Progress
from ducc.publish import Publisher, Transaction
from ducc.publish.sinks import ImageSink, holding, tell
from ducc.record import Record
from ducc.registry.client import RegistryClient
from ducc.registry.push import push_thin_image
from ducc.thin import build_thin_image, cvmfs_repository
from ducc.tree import remove_tree
from ducc.unpack.apply import LayerReport, resolve_lower_links, unpack_layer
from ducc.unpack.compression import decompressed
from ducc.unpack.extend import add_singularity
from ducc.unpack.flatten import flatten as merge_layers
from ducc.unpack.limits import Budget
from ducc.verify import Readable, VerifyingReader

log = logging.getLogger(__name__)

# Applied to every flat root before it is published; returns the paths it added.
FlatHook = Callable[[Path, ImageConfig], object]

# The client that pushes to a thin reference's registry, as an account (None: the settings' own).
ThinClient = Callable[[Reference, str | None], RegistryClient]


class _SiblingFailed(Exception):
    """Stops a layer because another layer of the same image failed (that one's error is the image's)."""


@dataclass(frozen=True)
class Conversion:
    """One run of the use case: the request, where it reports, where it may be cancelled, when it
    started, and the CVMFS repository its thin image names (empty: no thin image asked for)."""

    request: ConversionRequest
    progress: Progress
    cancel: CancelCheck
    started: float
    thin_repo: str = ""

    @property
    def reference(self) -> Reference:
        return self.request.reference

    def seconds(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class Resolved:
    """What the reference names now (``tag_digest``, one manifest HEAD) and, if the repository has that
    already, its ``record`` (it names ``tag_digest`` and its flat root exists)."""

    request: ConversionRequest
    tag_digest: Digest
    record: Record | None


@dataclass
class StagedLayers:
    """Every layer of an image, published: ``sources`` says where the layers this run published can be
    read while its staging lasts (the publisher's word: see ``Transaction.add_layer``); the others are
    read where ``TreeReader.layer_source`` says. The counts are what the run did to get there."""

    sources: dict[Digest, Path] = field(default_factory=dict)
    unpacked: int = 0
    reused: int = 0
    bytes_fetched: int = 0
    skipped_entries: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StagedFlat:
    """The image's flat root: built in staging at ``path``, or None when one with this config digest is
    published already (it is reused; only the tag moves)."""

    path: Path | None

    @property
    def reused(self) -> bool:
        return self.path is None


@dataclass(frozen=True)
class Published:
    """The image is visible: its tag points at its flat root and ``record`` is written, in ``revision``
    of the repository (CVMFS; None for a directory tree)."""

    record: Record
    revision: int | None


def fetch_image(client: RegistryClient, ref: Reference, platform: Platform, tag_digest: Digest) -> Image:
    """Manifest and config of ``ref`` at ``tag_digest``, for ``platform``, verified and checked for consistency."""
    top = client.get_manifest(ref, str(tag_digest))
    if isinstance(top, Index):
        chosen = top.select(platform)
        manifest = client.get_manifest(ref, str(chosen.digest))
        if not isinstance(manifest, Manifest):
            raise InvalidManifest(f"{ref}: index entry {chosen.digest} is not an image manifest")
    else:
        manifest = top
    config = ImageConfig.parse(client.get_blob(ref, manifest.config.digest))
    if not isinstance(top, Index) and config.architecture:
        try:
            offered = Platform.from_json({"os": config.os or "linux", "architecture": config.architecture})
        except InvalidPlatform as exc:
            raise InvalidManifest(f"{ref}: image config: {exc}") from exc
        if not offered.matches(Platform(platform.os, platform.architecture)):
            raise NoMatchingPlatform(f"{ref} is a single {offered} image; {platform} was asked for")
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidManifest(
            f"{ref}: manifest has {len(manifest.layers)} layers but config lists {len(config.diff_ids)} diff_ids"
        )
    return Image(ref, platform, tag_digest, manifest, config)


class LocalLocks:
    """One lock per layer digest within this process (the service passes Redis leases instead)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Digest, threading.Lock] = {}

    def __call__(self, digest: Digest) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(digest, threading.Lock())


class Converter:
    """Converts references into one repository. Collaborators are passed in (see ``ducc.wiring``);
    ``policies`` are the admission policies every image must pass before a layer of it is fetched."""

    def __init__(
        self,
        client: RegistryClient,
        publisher: Publisher,
        *,
        cache: BlobCache | None = None,
        progress: Progress | None = None,
        parallel_layers: int = 3,
        flat_hooks: Sequence[FlatHook] = (add_singularity,),
        layer_lock: Callable[[Digest], AbstractContextManager[object]] | None = None,
        thin_client: ThinClient | None = None,
        limits: Limits = Limits(),
        cvmfs_repo: str | None = None,
        thin_cvmfs_repo: str | None = None,
        policies: Sequence[Policy] = (),
        sinks: Sequence[ImageSink] = (),
    ) -> None:
        self.client = client
        self.publisher = publisher
        self.reader = publisher.reader  # reads have no side effects: no lock, no recovery
        self.sinks = tuple(sinks)  # stores written beside the repository, told after it (ducc.publish.sinks)
        self.cache = cache
        self.progress = progress or LogProgress()
        self.parallel_layers = max(1, parallel_layers)
        self.flat_hooks = tuple(flat_hooks)
        self.layer_lock = layer_lock or LocalLocks()
        self.thin_client: ThinClient = thin_client or (lambda target, user: client)
        self.limits = limits
        # The repository thin images' layer URLs name: the one published into (--cvmfs-repo), else the
        # request's (a wishlist's cvmfs_repo), else the operator's fallback (DUCC_THIN_CVMFS_REPO).
        self.cvmfs_repo = cvmfs_repo
        self.thin_cvmfs_repo = thin_cvmfs_repo
        self.policies = tuple(policies)

    # -- the use case --------------------------------------------------------------------

    def is_current(
        self, ref: Reference, platform: Platform = DEFAULT_PLATFORM, *, thin: Reference | None = None
    ) -> tuple[bool, Digest]:
        """Whether ``ref`` is published at the digest the registry serves now (one manifest HEAD), and,
        if ``thin`` is given, its record says that thin image was pushed there, and every store beside
        the repository holds it (one that missed it is filled in by converting it again: ``_unchanged``)."""
        record, tag_digest = self._current_record(ref, platform)
        return (record is not None and (thin is None or _has_thin(record, thin))
                and holding(self.sinks, ref, platform, record)), tag_digest

    def _current_record(self, ref: Reference, platform: Platform) -> tuple[Record | None, Digest]:
        """The record of ``ref`` if it matches what the registry serves now, and that digest."""
        tag_digest = self.client.resolve(ref)
        record = self.reader.read_record(ref, platform)
        if record is None or record.tag_digest != tag_digest or not self.reader.has_flat(record.config_digest):
            return None, tag_digest
        return record, tag_digest

    def convert(
        self,
        ref: Reference,
        platform: Platform = DEFAULT_PLATFORM,
        *,
        force: bool = False,
        progress: Progress | None = None,
    ) -> ConversionResult:
        """``run`` for a reference and a platform (the library and CLI's form)."""
        return self.run(ConversionRequest(ref, platform), force=force, progress=progress)

    def run(
        self, request: ConversionRequest, *, force: bool = False, progress: Progress | None = None,
        cancel: CancelCheck = never,
    ) -> ConversionResult:
        """Publish the request's image unless it is already current: the steps of the module docstring,
        in order. ``cancel`` is checked at the points ``ducc.cancel`` lists: up to the moment the tag
        moves, a cancel publishes nothing; after it, it only skips the thin push
        (``ConversionResult.thin_error``)."""
        run = Conversion(request, progress or self.progress, cancel, time.monotonic(),
                         self._thin_repo(request) if request.thin is not None else "")
        self._recover()
        resolved = self.resolve(run)
        if resolved.record is not None and not force:
            return self._unchanged(run, resolved, resolved.record)
        image = self.fetch(resolved)
        self.admit(image)
        with self.publisher.reservations.directory() as stage:
            # Reserved before anything is looked at: garbage collection keeps them while this runs.
            self.publisher.reservations.reserve(stage, [d.digest for d, _ in image.layers] + [image.config.digest])
            layers = self.unpack(run, image, stage)
            flat = self.flatten(run, image, layers, stage)
            published = self.commit(run, image, flat)
        self._tell_sinks(run, published.record)
        return self.thin(run, image, published.record, self._published(run, image, layers, flat, published))

    # -- the steps, in order -------------------------------------------------------------

    def resolve(self, run: Conversion) -> Resolved:
        """The digest the reference names now (one manifest HEAD) and the record, if it is current."""
        run.cancel("resolving")
        run.progress.stage(run.reference, "resolving")
        record, tag_digest = self._current_record(run.reference, run.request.platform)
        return Resolved(run.request, tag_digest, record)

    def fetch(self, resolved: Resolved) -> Image:
        """Manifest (the platform's, from an index) and config at the resolved digest, verified; no layer."""
        request = resolved.request
        return fetch_image(self.client, request.reference, request.platform, resolved.tag_digest)

    def admit(self, image: Image) -> None:
        """Every admission policy, in order (``ducc.admission``); ``ImageRefused`` stops the conversion
        before a layer is fetched or anything is published."""
        admit(self.policies, image)

    def unpack(self, run: Conversion, image: Image, stage: Path) -> StagedLayers:
        """Publish every layer of ``image`` not yet published. Missing layers are fetched and unpacked in
        parallel into ``stage`` (the first that fails stops its siblings at their next read); only once
        every one is verified are they published, base first (hardlinks into lower layers resolved then)."""
        staged = StagedLayers()
        missing: dict[Digest, tuple[Descriptor, Digest]] = {}
        for descriptor, diff_id in image.layers:
            if self.reader.has_layer(descriptor.digest):
                staged.reused += 1
            elif descriptor.digest not in missing:
                missing[descriptor.digest] = (descriptor, diff_id)
        if not missing:
            return staged
        run.cancel("fetching")
        run.progress.stage(image.reference, "fetching", f"{len(missing)} of {len(image.layers)} layers")
        reports = self._fetch_layers(run, image, missing, stage, staged)
        # Only now, every layer verified, is any of them published; hardlinks into lower layers need those
        # layers whole: resolve them base first.
        run.progress.stage(image.reference, "unpacking", f"{len(reports)} layers verified")
        lowers: list[Path] = []
        with self.publisher.transaction() as txn:  # one transaction: a publisher may publish them together
            for descriptor, _ in image.layers:
                report = reports.pop(descriptor.digest, None)  # a layer listed twice is published once
                if report is not None and not self.reader.has_layer(descriptor.digest):
                    if report.pending:
                        resolve_lower_links(stage / descriptor.digest.hex / "layerfs", report.pending, lowers)
                    staged.sources[descriptor.digest] = self._commit_layer(image.reference, descriptor.digest, stage,
                                                                           report, txn)
                lowers.append(staged.sources.get(descriptor.digest) or self.reader.layer_source(descriptor.digest))
        return staged

    def flatten(self, run: Conversion, image: Image, layers: StagedLayers, stage: Path) -> StagedFlat:
        """Merge the layers into a flat root in ``stage`` and apply the flat hooks, unless a flat root with
        this config digest is published already. Built outside the repository lock: only ``commit`` is
        serialised."""
        if self.reader.has_flat(image.config.digest):
            return StagedFlat(None)
        run.cancel("flattening")
        run.progress.stage(image.reference, "flattening")
        flat = stage / "flat"
        flat.mkdir()
        try:
            merge_layers([layers.sources.get(d.digest) or self.reader.layer_source(d.digest)
                          for d, _ in image.layers], flat)
            for hook in self.flat_hooks:
                hook(flat, image.config)
        except OSError as exc:
            raise (storage_error(exc, f"{image.reference}: cannot build its flat root") or exc) from exc
        return StagedFlat(flat)

    def commit(self, run: Conversion, image: Image, flat: StagedFlat) -> Published:
        """In one transaction: publish the flat root (a twin another worker built meanwhile wins), check
        every layer and the flat root are there, point the tag at it, write the record (last)."""
        ref, platform = image.reference, image.platform
        with self.publisher.transaction() as txn:
            if flat.path is not None:
                # The layers let a backend publish the flat root from their content (CVMFS grafts).
                txn.add_flat(image.config.digest, flat.path, layers=[d.digest for d, _ in image.layers])
            self._check_present(image)
            run.cancel("publishing")  # the last cancel point that keeps the image unpublished
            run.progress.stage(ref, "publishing")
            txn.point_tag(ref, platform, image.config.digest)
            record = self._record(image, run.request.origin)
            txn.write_record(ref, platform, record)
        return Published(record, txn.revision)

    def thin(self, run: Conversion, image: Image, record: Record, result: ConversionResult) -> ConversionResult:
        """Push the request's thin image of the published ``image`` (none asked for: ``result`` as it is),
        then say so in its ``record``; a cancel now skips the push and leaves the image published."""
        target = run.request.thin
        if target is None:
            return result
        ref = image.reference
        try:
            run.cancel("thin")
        except JobCancelled as exc:
            run.progress.stage(ref, "thin", f"thin image {target} not pushed: {exc}")
            return replace(result, thin_error=str(exc), seconds=run.seconds())
        run.progress.stage(ref, "thin", f"pushing thin image {target}")
        built = build_thin_image(ref, image.manifest, image.config, run.thin_repo)
        # A thin image pushed earlier under another name (the output_format changed) holds the same blobs:
        # the registry can mount them from there instead of receiving them again.
        mount_from = _earlier_thin(record, target)
        try:
            pushed = push_thin_image(self.thin_client(target, run.request.thin_user), target, built,
                                     mount_from=mount_from)
        except DuccError as exc:
            raise ThinImageNotPushed.because(exc) from exc
        with self.publisher.transaction() as txn:  # a failure here is the publisher's: retried like any other
            txn.write_record(ref, image.platform, record.with_thin(target, pushed.digest))
        run.progress.stage(ref, "thin", f"thin image pushed: {pushed}")
        return replace(result, thin_digest=pushed.digest, thin_pushed=pushed.changed, seconds=run.seconds())

    # -- between the steps ---------------------------------------------------------------

    def _unchanged(self, run: Conversion, resolved: Resolved, record: Record) -> ConversionResult:
        """The tag is current: nothing to do, unless the request asks for a thin image its record does
        not name (not asked for then, or its push failed): then fetch, admit and push only that."""
        request, ref = run.request, run.reference
        self._tell_sinks(run, record)  # a store that missed it (a crash after the record was written) gets it now
        path = str(layout.tag_link(ref, request.platform))
        short = resolved.tag_digest.short
        if request.thin is None or _has_thin(record, request.thin):
            run.progress.stage(ref, "unchanged", f"{short} already published")
            return ConversionResult(request, "unchanged", path, tag_digest=resolved.tag_digest,
                                    config_digest=record.config_digest, seconds=run.seconds(),
                                    thin_digest=record.thin_digest if request.thin else None)
        run.progress.stage(ref, "unchanged", f"{short} already published; its thin image is not")
        current = ConversionResult(request, "unchanged", path, tag_digest=resolved.tag_digest,
                                   config_digest=record.config_digest)
        image = self.fetch(resolved)
        self.admit(image)
        return self.thin(run, image, record, current)

    def _published(
        self, run: Conversion, image: Image, layers: StagedLayers, flat: StagedFlat, published: Published
    ) -> ConversionResult:
        """Say what the run did (the ``published`` stage) and return it."""
        seconds = run.seconds()
        revision = published.revision
        run.progress.stage(
            image.reference, "published",
            f"{layers.unpacked} layers unpacked, {layers.reused} reused, "
            f"flat {'reused' if flat.reused else 'built'}, {seconds:.1f}s"
            + (f", revision {revision} of {self.reader.name}" if revision is not None else ""),
        )
        return ConversionResult(
            run.request, "published", str(layout.tag_link(image.reference, image.platform)),
            tag_digest=image.tag_digest, config_digest=image.config.digest,
            layers_unpacked=layers.unpacked, layers_reused=layers.reused, flat_reused=flat.reused,
            bytes_fetched=layers.bytes_fetched, seconds=seconds, skipped_entries=tuple(layers.skipped_entries),
            revision=revision,
        )

    def _tell_sinks(self, run: Conversion, record: Record) -> None:
        """Every store beside the repository holds the published image now; what one changed or failed
        to do is a line of the run's progress (the image stays published either way)."""
        ref, platform = run.reference, run.request.platform
        for line in tell(self.sinks, f"adding {ref}",
                         lambda sink: sink.published(ref, platform, record, self.reader)):
            run.progress.stage(ref, "publishing", line)

    def _recover(self) -> None:
        """What an earlier crash left goes now, whatever this run turns out to do (a run that finds its
        tag current builds nothing, and would otherwise never clean up): staging debris, and on CVMFS a
        transaction a dead writer left open. A failure to abort that transaction stops the run (the
        next writer could not open its own); a local cleanup that fails is only logged."""
        try:
            self.publisher.recover()
        except OSError as exc:  # cleaning up staging is never worth failing a conversion for
            log.warning("could not sweep staging debris: %s", exc)

    def _check_present(self, image: Image) -> None:
        """Every layer and the flat root are published: the record about to be written lists them."""
        missing = [f"layer {d.digest}" for d, _ in image.layers if not self.reader.has_layer(d.digest)]
        if not self.reader.has_flat(image.config.digest):
            missing.append(f"flat root {image.config.digest}")
        if missing:
            raise TreeMissing(f"{image.reference}: {', '.join(missing)} removed during the conversion "
                              "(garbage collection on another host?); a retry publishes them again")

    def _thin_repo(self, request: ConversionRequest) -> str:
        """The CVMFS repository the request's thin image names in its layer URLs; ThinImageRefused if
        nothing names one (a name is never made up: readers would look for the layers elsewhere)."""
        repo = self.cvmfs_repo or request.thin_repo or self.thin_cvmfs_repo
        if not repo:
            raise ThinImageRefused(
                f"{request.reference}: a thin image needs the CVMFS repository its layers are read from: "
                "give --cvmfs-repo, the wishlist's cvmfs_repo or DUCC_THIN_CVMFS_REPO")
        try:
            return cvmfs_repository(repo)
        except ValueError as exc:
            raise ThinImageRefused(f"{request.reference}: thin image: {exc}") from exc

    # -- layers --------------------------------------------------------------------------

    def _fetch_layers(
        self, run: Conversion, image: Image, missing: dict[Digest, tuple[Descriptor, Digest]], stage: Path,
        staged: StagedLayers,
    ) -> dict[Digest, LayerReport]:
        """Fetch and unpack the ``missing`` layers into ``stage`` in parallel, each through both digest
        checks and the image's budget; returns the report of each one unpacked here (a layer another
        conversion published meanwhile counts as reused). The first failure is the image's."""
        reports: dict[Digest, LayerReport] = {}
        budget = Budget(self.limits)
        failed = threading.Event()  # set by the first layer that fails: its siblings stop at their next read

        def obtain(descriptor: Descriptor, diff_id: Digest) -> tuple[LayerReport | None, int]:
            try:
                return self._obtain_layer(run, descriptor, diff_id, stage, budget, failed)
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=min(self.parallel_layers, len(missing))) as pool:
            futures = {
                digest: pool.submit(obtain, descriptor, diff_id) for digest, (descriptor, diff_id) in missing.items()
            }
            errors: list[BaseException] = []
            for digest, future in futures.items():
                try:
                    report, fetched = future.result()
                except BaseException as exc:  # collected so every worker finishes before staging is removed
                    errors.append(exc)
                    continue
                staged.bytes_fetched += fetched
                if report is None:
                    staged.reused += 1
                else:
                    reports[digest] = report
                    staged.unpacked += 1
                    staged.skipped_entries.extend(report.skipped)
            if errors:
                # The first layer that failed on its own, not a sibling it stopped.
                raise next((e for e in errors if not isinstance(e, _SiblingFailed)), errors[0])
        return reports

    def _obtain_layer(
        self, run: Conversion, descriptor: Descriptor, diff_id: Digest, stage: Path, budget: Budget,
        failed: threading.Event,
    ) -> tuple[LayerReport | None, int]:
        """Unpack one layer into ``stage`` unless another conversion published it first (None: reused).

        The layer lock makes concurrent conversions that share a layer fetch it at the same
        time once: the second waits, then finds it published, or (if the first one's image
        is still fetching its other layers, which it waits for before publishing any)
        unpacks it too. The caller publishes the layers once all of them are verified.
        ``failed`` set (a sibling failed) stops this one before it starts and at its next read.
        """
        digest = descriptor.digest
        if failed.is_set():
            raise _SiblingFailed()
        with self.layer_lock(digest):
            if self.reader.has_layer(digest):
                return None, 0
            return self._unpack(run, descriptor, diff_id, stage, budget, failed)

    def _commit_layer(self, ref: Reference, digest: Digest, stage: Path, report: LayerReport,
                      txn: Transaction) -> Path:
        if report.skipped:
            shown = ", ".join(report.skipped[:6]) + (", ..." if len(report.skipped) > 6 else "")
            log.warning(
                "%s: layer %s: skipped %d device nodes/FIFOs (an unprivileged writer cannot publish them): %s",
                ref, digest.short, len(report.skipped), shown,
            )
        return txn.add_layer(digest, stage / digest.hex)

    def _unpack(
        self, run: Conversion, descriptor: Descriptor, diff_id: Digest, stage: Path, budget: Budget,
        failed: threading.Event,
    ) -> tuple[LayerReport, int]:
        """Stream one blob through both digest checks into ``stage/<hex>/layerfs``, reporting to ``run``'s
        progress and stopping at its cancel point ``fetching``."""
        ref, digest = run.reference, descriptor.digest
        staged = stage / digest.hex
        if staged.exists():
            remove_tree(staged)
        (staged / "layerfs").mkdir(parents=True)
        cached = self.cache.get(digest, descriptor.size) if self.cache else None
        writer: CacheWriter | None = None
        fetched = 0

        def heartbeat() -> None:
            """Between reads, and about once a second while no byte arrives: a cancel or a sibling's
            failure stops this download even when the registry sends nothing."""
            if failed.is_set():  # the image is refused already: the rest of this blob is not worth reading
                raise _SiblingFailed()
            run.progress.layer(digest, fetched, descriptor.size)
            run.cancel("fetching")

        def on_read(chunk: bytes) -> None:
            nonlocal fetched
            fetched += len(chunk)
            if writer is not None:
                writer.write(chunk)
            heartbeat()

        try:
            if cached is not None:
                try:
                    cached_file = open(cached, "rb")
                except FileNotFoundError:  # pruned by another process just now: fetch it
                    cached_file = None
                if cached_file is not None:
                    with cached_file:
                        report = self._apply(ref, cached_file, descriptor, diff_id, staged, on_read, budget)
                    return report, 0
            with self.client.open_blob(ref, digest, descriptor.size, heartbeat=heartbeat) as stream:
                if self.cache is not None:
                    writer = self.cache.writer(digest)
                report = self._apply(ref, stream, descriptor, diff_id, staged, on_read, budget)
            if writer is not None:
                writer.commit()
            return report, fetched
        except BaseException:
            if writer is not None:
                writer.abandon()
            raise

    def _apply(
        self,
        ref: Reference,
        source: Readable,
        descriptor: Descriptor,
        diff_id: Digest,
        staged: Path,
        on_read: Callable[[bytes], None],
        budget: Budget,
    ) -> LayerReport:
        compressed = VerifyingReader(
            source, descriptor.digest, what=f"layer {descriptor.digest}", size=descriptor.size, on_read=on_read
        )
        try:
            with decompressed(compressed) as tar_stream:
                uncompressed = VerifyingReader(
                    tar_stream, diff_id, what=f"uncompressed layer {descriptor.digest.short} (diff_id)"
                )
                report = unpack_layer(uncompressed, staged / "layerfs", budget)
                uncompressed.verify()
        except LocalStorageError as exc:  # at once, in the image's terms; the rest of the blob is not read
            raise type(exc)(f"{ref}: layer {descriptor.digest}: {exc}", errno_code=exc.errno) from exc
        except LimitExceeded as exc:  # the same: refused at the entry that crossed the limit
            raise LimitExceeded(f"{ref}: layer {descriptor.digest} refused: {exc}") from exc
        except (UnsafeLayer, RegistryUnavailable, JobCancelled, _SiblingFailed):
            raise  # the blob's own digest is beside the point (and the rest of it not worth downloading)
        except (DuccError, OSError, EOFError, ValueError) as exc:
            # A blob that broke off or lied surfaces here as a bad tar or gzip stream:
            # the compressed digest says whether the blob is at fault (it is checked first).
            compressed.verify()
            if isinstance(exc, DuccError):
                raise
            raise UnsupportedLayer(f"layer {descriptor.digest} could not be read: {exc}") from exc
        compressed.verify()
        return report

    # -- record --------------------------------------------------------------------------

    def _record(self, image: Image, origin: str | None) -> Record:
        return Record.create(
            image.reference, image.platform, image.tag_digest, image.manifest, image.config,
            converted_at=datetime.now(UTC).isoformat(timespec="seconds"), converted_by=f"ducc {__version__}",
            extra={"requested_by": origin} if origin else None,
        )


def _earlier_thin(record: Record, target: Reference) -> Reference | None:
    """The thin image ``record`` names, if it was pushed somewhere other than ``target``."""
    try:
        earlier = Reference.parse(record.thin_reference) if record.thin_reference else None
    except InvalidReference:
        return None
    return earlier if earlier is not None and earlier != target else None


def _has_thin(record: Record, target: Reference) -> bool:
    """Whether ``record`` says its thin image was pushed to ``target``."""
    return record.thin_digest is not None and record.thin_reference == str(target)
