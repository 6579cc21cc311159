"""Settings from ``DUCC_*`` environment variables (secrets also from ``DUCC_*_FILE``), in one frozen value.

| variable | meaning | default |
|---|---|---|
| DUCC_PUBLISHER | the repository backend: ``directory`` or ``cvmfs`` | ``cvmfs`` if DUCC_CVMFS_REPO is set, else ``directory`` |
| DUCC_ROOT | repository root for the directory publisher | ``$XDG_DATA_HOME/ducc/root`` |
| DUCC_CVMFS_REPO | ``REPO[/subdir]``: publish into this CVMFS repository through ``cvmfs_server`` | |
| DUCC_CVMFS_SERVER | the ``cvmfs_server`` command | ``cvmfs_server`` on PATH |
| DUCC_CVMFS_MOUNT | where the repository is mounted on this publisher | ``/cvmfs/<repo>`` |
| DUCC_CVMFS_GATEWAY | ``1``: a gateway publisher (per-node transactions, leased sub-paths) | off |
| DUCC_STRATUM1_URLS | comma-separated stratum 1 base URLs (``http://host/cvmfs/<repo>`` or ``http://host``) the worker polls until they serve each new revision | |
| DUCC_STRATUM1_TIMEOUT | seconds to wait for the stratum 1s per image | 1800 |
| DUCC_REPOSITORY | the repository's name: what serialises writers across hosts | stored in the root on first use |
| DUCC_CACHE_DIR | blob cache (``off`` disables) | ``$XDG_CACHE_HOME/ducc`` |
| DUCC_CACHE_MAX_BYTES | blob cache budget | 10 GiB |
| DUCC_PLATFORM | default platform | ``linux/amd64`` |
| DUCC_INSECURE_REGISTRIES | hosts reached over plain HTTP (loopback always is) | |
| DUCC_PARALLEL_LAYERS | layers fetched and unpacked at once, per image | 3 |
| DUCC_MAX_IMAGE_BYTES | uncompressed bytes one conversion may write (the layers it unpacks) | 100 GiB |
| DUCC_MAX_LAYER_ENTRIES | tar entries one layer may have | 1,000,000 |
| DUCC_MAX_PATH_DEPTH | levels of directories in one path of an image | 512 |
| DUCC_MAX_PATH_BYTES | bytes of one path of an image | 3,072 |
| DUCC_MAX_LAYERS | layers an image's manifest may list; more: refused before any layer is fetched (``ducc.admission``) | no limit |
| DUCC_MAX_COMPRESSED_BYTES | compressed bytes an image's manifest may declare (its distinct layers); more: refused before any layer is fetched | no limit |
| DUCC_SYNC_CONCURRENCY | images checked/converted at once by ``sync`` | 4 |
| DUCC_RETRY_ATTEMPTS | attempts per registry request | 5 |
| DUCC_MIN_TRANSFER_RATE | bytes/s below which a registry transfer is cut off: each may take DUCC_MIN_TRANSFER_TIME plus its size at this rate | 16384 |
| DUCC_MIN_TRANSFER_TIME | seconds every registry transfer may take, however small | 60 |
| DUCC_MAX_TAG_PAGES / DUCC_MAX_TAGS | most pages and tags of one repository's tag list (a tag glob); beyond them the list fails | 1000 / 100,000 |
| DUCC_REGISTRY_USER / _PASSWORD(_FILE) / _HOSTS | credentials and the hosts they are for | |
| DUCC_OUTPUT_REGISTRY_USER / _PASSWORD(_FILE) | account that pushes thin images, offered only to the thin image's registry (user default: the wishlist's ``user``; ``DUCC_OUTPUT_REGISTRY_PASS`` is DUCC's name for the password) | |
| DUCC_THIN_CVMFS_REPO | ``REPO[/subdir]`` the layer URLs of thin images name when neither DUCC_CVMFS_REPO (``--cvmfs-repo``) nor the wishlist's ``cvmfs_repo`` does (a directory root exported into CVMFS); with none of them thin images are refused | |
| DOCKER_CONFIG | directory of a Docker ``config.json`` to take credentials from | ``~/.docker`` |
| DUCC_FSYNC | ``1``: flush the filesystem before each record (power-loss safety) | off |
| DUCC_REDIS_URL | broker, locks and job status; unset: ``ducc serve`` runs its own Redis | |
| DUCC_REDIS_PASSWORD(_FILE) | the password of the Redis at DUCC_REDIS_URL (``redis://`` or ``rediss://``), kept out of the URL, so it is never in a process's arguments or a log line | |
| DUCC_REDIS_FSYNC | embedded Redis: ``everysec`` (survives any crash of a process; a power cut may lose the last second) or ``always`` (survives that too, slower) | everysec |
| DUCC_STATE_DIR | embedded Redis data, beat schedule | ``$XDG_STATE_HOME/ducc`` |
| DUCC_WISHLIST | wishlist the scheduled sync reads | |
| DUCC_SYNC_SCHEDULE | cron expression of the wishlist sync | ``0 3 * * *`` |
| DUCC_GC_GRACE | how long a flat root or layer stays after it became unreferenced (a DURATION: seconds, or ``90s`` ``30m`` ``12h`` ``7d``) | ``7d`` |
| DUCC_GC_SCHEDULE | cron expression of the service's garbage collection | ``0 4 * * 0`` (weekly) |
| DUCC_UNPUBLISH_ON_DELETE | ``1``: a registry ``delete`` notification unpublishes the tag, once the registry answers its manifest with a 404 | off |
| DUCC_UNPUBLISH_REMOVED_WISHES | ``1``: the scheduled sync unpublishes tags it had published that left the (fully expanded) wishlist | off |
| DUCC_LISTEN | address of the web app | ``127.0.0.1:8080`` |
| DUCC_WORKER_CONCURRENCY | conversions one worker runs at once | 2 |
| DUCC_REGISTRY_CONCURRENCY | manifest checks at once per registry during a sync | 8 |
| DUCC_JOB_RETRY_BASE | seconds before the first retry of a temporary failure (doubling, at most 1 h) | 30 |
| DUCC_JOB_MAX_ATTEMPTS | attempts of a job before it fails for good | 8 |
| DUCC_JOB_LEASE | seconds after which a silent worker's job is requeued (renewed every third) | 30 |
| DUCC_JOB_TTL | seconds job records are kept | 14 days |
| DUCC_ALLOW | comma-separated globs of images webhooks and the API may convert | |
| DUCC_WEBHOOK_TOKEN / _<SOURCE> (_FILE) | webhook and API tokens, for every source or one | |
| DUCC_WEBHOOK_MAX_BYTES | largest request body the web app reads | 1 MiB |
| DUCC_LOG_LEVEL | ``DEBUG`` ``INFO`` ``WARNING`` | ``INFO`` |

This module is the only reader of the environment: everything else receives a
``Settings`` (``env`` keeps the environment it was read from, for the child
processes of ``ducc serve``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from ducc.model.limits import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_LAYER_ENTRIES,
    DEFAULT_MAX_PATH_BYTES,
    DEFAULT_MAX_PATH_DEPTH,
    DEFAULT_MAX_TAG_PAGES,
    DEFAULT_MAX_TAGS,
    DEFAULT_MIN_TRANSFER_RATE,
    DEFAULT_MIN_TRANSFER_TIME,
)
from ducc.model.manifest import Platform


def read_secret(env: Mapping[str, str], name: str) -> str | None:
    """``NAME`` from the environment, or the content of the file named by ``NAME_FILE`` (trailing newline
    dropped); a file that cannot be read is a ValueError naming it (never its content)."""
    value = env.get(name)
    if value:
        return value
    path = env.get(f"{name}_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
            raise ValueError(f"{name}_FILE {path} cannot be read: {reason}") from None
    return None


def _redis_password(env: Mapping[str, str]) -> str | None:
    password = read_secret(env, "DUCC_REDIS_PASSWORD")
    url = env.get("DUCC_REDIS_URL") or ""
    if password and url:
        try:
            in_url = urlsplit(url).password
        except ValueError:
            in_url = None
        if in_url:
            raise ValueError("the Redis password is given twice: in DUCC_REDIS_URL and in DUCC_REDIS_PASSWORD(_FILE); "
                             "keep it out of the URL")
    return password


def _data_home(env: Mapping[str, str]) -> Path:
    return Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def _state_home(env: Mapping[str, str]) -> Path:
    return Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


def _cache_home(env: Mapping[str, str]) -> Path:
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, not {value!r}") from exc


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def _optional_positive(env: Mapping[str, str], name: str) -> int | None:
    """A limit that is off unless set (empty: off too)."""
    return _positive(env, name, 1) if env.get(name) else None


def _platform(env: Mapping[str, str], name: str) -> Platform:
    try:
        return Platform.parse(env.get(name) or "linux/amd64")
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _tokens(env: Mapping[str, str]) -> dict[str, str]:
    """``DUCC_WEBHOOK_TOKEN`` under ``""`` and every ``DUCC_WEBHOOK_TOKEN_<SOURCE>`` under ``<source>``."""
    prefix = "DUCC_WEBHOOK_TOKEN"
    sources = {""}
    for name in env:
        if name.startswith(prefix + "_"):
            source = name[len(prefix) + 1:]
            source = source[: -len("_FILE")] if source.endswith("_FILE") else source
            sources.add("" if source == "" else source.lower())
    found = {}
    for source in sources:
        value = read_secret(env, f"{prefix}_{source.upper()}" if source else prefix)
        if value:
            found[source] = value
    return found


PUBLISHERS = ("directory", "cvmfs")

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in a DURATION: plain seconds (``0``, ``90``) or a whole number with a unit (``90s``,
    ``30m``, ``12h``, ``7d``). ValueError, with the accepted forms, for anything else."""
    found = _DURATION.match(text.strip().lower())
    if not found:
        raise ValueError(f"{text!r} is not a duration: use seconds (90) or a whole number with a unit "
                         "s, m, h or d (90s, 30m, 12h, 7d)")
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def _duration(env: Mapping[str, str], name: str, default: str) -> int:
    try:
        return parse_duration(env.get(name) or default)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").lower() in ("1", "true", "yes", "on")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = (env.get(name) or default).lower()
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    root: Path
    cache_dir: Path | None
    cache_max_bytes: int
    platform: Platform
    insecure_registries: frozenset[str]
    parallel_layers: int
    sync_concurrency: int
    retry_attempts: int
    log_level: str
    fsync: bool = False
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_layer_entries: int = DEFAULT_MAX_LAYER_ENTRIES
    max_path_depth: int = DEFAULT_MAX_PATH_DEPTH
    max_path_bytes: int = DEFAULT_MAX_PATH_BYTES
    max_layers: int | None = None
    max_compressed_bytes: int | None = None
    min_transfer_rate: int = DEFAULT_MIN_TRANSFER_RATE
    min_transfer_time: int = DEFAULT_MIN_TRANSFER_TIME
    max_tag_pages: int = DEFAULT_MAX_TAG_PAGES
    max_tags: int = DEFAULT_MAX_TAGS
    redis_url: str | None = None
    redis_password: str | None = field(repr=False, default=None)
    redis_fsync: str = "everysec"
    state_dir: Path = Path("/var/lib/ducc")
    wishlist: Path | None = None
    sync_schedule: str = "0 3 * * *"
    gc_grace: int = 7 * 86400
    gc_schedule: str = "0 4 * * 0"
    unpublish_on_delete: bool = False
    unpublish_removed_wishes: bool = False
    listen: str = "127.0.0.1:8080"
    worker_concurrency: int = 2
    registry_concurrency: int = 8
    job_ttl: int = 14 * 86400
    job_retry_base: int = 30
    job_max_attempts: int = 8
    job_lease: int = 30
    allow: tuple[str, ...] = ()
    webhook_max_bytes: int = 1 << 20
    publisher: str = "directory"
    repository: str | None = None
    cvmfs_repo: str | None = None
    thin_cvmfs_repo: str | None = None
    cvmfs_server: str = "cvmfs_server"
    cvmfs_mount: Path | None = None
    cvmfs_gateway: bool = False
    stratum1_urls: tuple[str, ...] = ()
    stratum1_timeout: int = 1800
    registry_user: str | None = None
    registry_password: str | None = field(repr=False, default=None)
    registry_hosts: tuple[str, ...] = ()
    docker_config: Path | None = None
    output_registry_user: str | None = None
    output_registry_password: str | None = field(repr=False, default=None)
    webhook_tokens: Mapping[str, str] = field(repr=False, default_factory=dict)
    env: Mapping[str, str] = field(repr=False, default_factory=dict)

    @property
    def embedded_redis_dir(self) -> Path:
        """Where ``ducc serve`` keeps its embedded Redis (data and socket)."""
        return self.state_dir / "redis"

    @property
    def embedded_redis_socket(self) -> Path:
        return self.embedded_redis_dir / "redis.sock"

    @property
    def embedded_redis_url(self) -> str:
        return f"unix://{self.embedded_redis_socket}"

    def with_cvmfs_repo(self, repo: str) -> Settings:
        """These settings publishing into the CVMFS repository ``REPO[/subdir]`` (``--cvmfs-repo``);
        ``env`` says so too, for the child processes of ``ducc serve``."""
        env = {**self.env, "DUCC_CVMFS_REPO": repo, "DUCC_PUBLISHER": "cvmfs"}
        return replace(self, publisher="cvmfs", cvmfs_repo=repo, env=env)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        cache = env.get("DUCC_CACHE_DIR", str(_cache_home(env) / "ducc"))
        return cls(
            root=Path(env.get("DUCC_ROOT") or _data_home(env) / "ducc" / "root"),
            cache_dir=None if cache.lower() in ("", "off", "none") else Path(cache),
            cache_max_bytes=_int(env, "DUCC_CACHE_MAX_BYTES", 10 << 30),
            platform=_platform(env, "DUCC_PLATFORM"),
            insecure_registries=frozenset(_list(env, "DUCC_INSECURE_REGISTRIES")),
            parallel_layers=_int(env, "DUCC_PARALLEL_LAYERS", 3),
            sync_concurrency=_int(env, "DUCC_SYNC_CONCURRENCY", 4),
            retry_attempts=_int(env, "DUCC_RETRY_ATTEMPTS", 5),
            log_level=(env.get("DUCC_LOG_LEVEL") or "INFO").upper(),
            fsync=_flag(env, "DUCC_FSYNC"),
            max_image_bytes=_positive(env, "DUCC_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES),
            max_layer_entries=_positive(env, "DUCC_MAX_LAYER_ENTRIES", DEFAULT_MAX_LAYER_ENTRIES),
            max_path_depth=_positive(env, "DUCC_MAX_PATH_DEPTH", DEFAULT_MAX_PATH_DEPTH),
            max_path_bytes=_positive(env, "DUCC_MAX_PATH_BYTES", DEFAULT_MAX_PATH_BYTES),
            max_layers=_optional_positive(env, "DUCC_MAX_LAYERS"),
            max_compressed_bytes=_optional_positive(env, "DUCC_MAX_COMPRESSED_BYTES"),
            min_transfer_rate=_positive(env, "DUCC_MIN_TRANSFER_RATE", DEFAULT_MIN_TRANSFER_RATE),
            min_transfer_time=_positive(env, "DUCC_MIN_TRANSFER_TIME", DEFAULT_MIN_TRANSFER_TIME),
            max_tag_pages=_positive(env, "DUCC_MAX_TAG_PAGES", DEFAULT_MAX_TAG_PAGES),
            max_tags=_positive(env, "DUCC_MAX_TAGS", DEFAULT_MAX_TAGS),
            redis_url=env.get("DUCC_REDIS_URL") or None,
            redis_password=_redis_password(env),
            redis_fsync=_choice(env, "DUCC_REDIS_FSYNC", ("everysec", "always"), "everysec"),
            state_dir=Path(env.get("DUCC_STATE_DIR") or _state_home(env) / "ducc"),
            wishlist=Path(env["DUCC_WISHLIST"]) if env.get("DUCC_WISHLIST") else None,
            sync_schedule=env.get("DUCC_SYNC_SCHEDULE") or "0 3 * * *",
            gc_grace=_duration(env, "DUCC_GC_GRACE", "7d"),
            gc_schedule=env.get("DUCC_GC_SCHEDULE") or "0 4 * * 0",
            unpublish_on_delete=_flag(env, "DUCC_UNPUBLISH_ON_DELETE"),
            unpublish_removed_wishes=_flag(env, "DUCC_UNPUBLISH_REMOVED_WISHES"),
            listen=env.get("DUCC_LISTEN") or "127.0.0.1:8080",
            worker_concurrency=_int(env, "DUCC_WORKER_CONCURRENCY", 2),
            registry_concurrency=_int(env, "DUCC_REGISTRY_CONCURRENCY", 8),
            job_ttl=_int(env, "DUCC_JOB_TTL", 14 * 86400),
            job_retry_base=_int(env, "DUCC_JOB_RETRY_BASE", 30),
            job_max_attempts=_int(env, "DUCC_JOB_MAX_ATTEMPTS", 8),
            job_lease=max(3, _int(env, "DUCC_JOB_LEASE", 30)),
            allow=_list(env, "DUCC_ALLOW"),
            webhook_max_bytes=_int(env, "DUCC_WEBHOOK_MAX_BYTES", 1 << 20),
            publisher=_choice(env, "DUCC_PUBLISHER", PUBLISHERS, "cvmfs" if env.get("DUCC_CVMFS_REPO") else "directory"),
            repository=env.get("DUCC_REPOSITORY") or None,
            cvmfs_repo=env.get("DUCC_CVMFS_REPO") or None,
            thin_cvmfs_repo=env.get("DUCC_THIN_CVMFS_REPO") or None,
            cvmfs_server=env.get("DUCC_CVMFS_SERVER") or "cvmfs_server",
            cvmfs_mount=Path(env["DUCC_CVMFS_MOUNT"]) if env.get("DUCC_CVMFS_MOUNT") else None,
            cvmfs_gateway=_flag(env, "DUCC_CVMFS_GATEWAY"),
            stratum1_urls=_list(env, "DUCC_STRATUM1_URLS"),
            stratum1_timeout=_int(env, "DUCC_STRATUM1_TIMEOUT", 1800),
            registry_user=env.get("DUCC_REGISTRY_USER") or None,
            registry_password=read_secret(env, "DUCC_REGISTRY_PASSWORD"),
            registry_hosts=_list(env, "DUCC_REGISTRY_HOSTS"),
            docker_config=Path(env["DOCKER_CONFIG"]) / "config.json" if env.get("DOCKER_CONFIG")
            else Path(env.get("HOME") or Path.home()) / ".docker" / "config.json",
            output_registry_user=env.get("DUCC_OUTPUT_REGISTRY_USER") or None,
            output_registry_password=read_secret(env, "DUCC_OUTPUT_REGISTRY_PASSWORD")
            or read_secret(env, "DUCC_OUTPUT_REGISTRY_PASS"),
            webhook_tokens=_tokens(env),
            env=env,
        )
