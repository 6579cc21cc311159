"""Settings from ``DUCC_*`` environment variables (secrets also from ``DUCC_*_FILE``), in one frozen value
of small frozen sections: ``settings.redis.url``, ``settings.gc.grace``, ``settings.jobs.lease`` …

Every variable is declared once, on the field it sets (``setting(...)``: its name, what it means, the
default as the README states it, and how it is read). One loader, ``Settings.from_env``, reads them all;
a bad value is a ValueError of one line naming the variable. The README's "Configuration" table is
generated from these declarations (``python -m ducc.settings --markdown``) and a test keeps the two equal:
the README is where the variables are listed, not this docstring.

This module is the only reader of the environment: everything else receives a ``Settings`` (``env`` keeps
the environment it was read from, for the child processes of ``ducc serve``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
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

Env = Mapping[str, str]
# How one variable is read: the environment, the variable's name, the field's default (MISSING if it has none).
Reader = Callable[[Env, str, Any], Any]


# --- readers: one per kind of value; each error is one line that names the variable ---------------------

def read_secret(env: Env, name: str) -> str | None:
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


def _secret(env: Env, name: str, default: Any) -> str | None:
    return read_secret(env, name)


def _text(env: Env, name: str, default: Any) -> Any:
    """The value as written; unset or empty: the default."""
    return env.get(name) or default


def _path(env: Env, name: str, default: Any) -> Path | None:
    return Path(env[name]) if env.get(name) else default


def _int(env: Env, name: str, default: Any) -> Any:
    value = env.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, not {value!r}") from exc


def _positive(env: Env, name: str, default: Any) -> Any:
    """An integer of at least 1; unset: the default (None: the limit is off)."""
    value = _int(env, name, default)
    if value is not None and value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def _flag(env: Env, name: str, default: Any) -> bool:
    return env.get(name, "").lower() in ("1", "true", "yes", "on")


def _list(env: Env, name: str, default: Any = ()) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _hosts(env: Env, name: str, default: Any) -> frozenset[str]:
    return frozenset(_list(env, name))


def _platform(env: Env, name: str, default: Any) -> Platform:
    try:
        return Platform.parse(env.get(name) or "linux/amd64")
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def _choice(*choices: str) -> Callable[[Env, str, Any], str]:
    def read(env: Env, name: str, default: Any) -> str:
        value = str(env.get(name) or default).lower()
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value
    return read


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


def _duration(env: Env, name: str, default: Any) -> int:
    value = env.get(name)
    if not value:
        return int(default)
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def _data_home(env: Env) -> Path:
    return Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def _state_home(env: Env) -> Path:
    return Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


def _cache_home(env: Env) -> Path:
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _root(env: Env, name: str, default: Any) -> Path:
    return Path(env.get(name) or _data_home(env) / "ducc" / "root")


def _state_dir(env: Env, name: str, default: Any) -> Path:
    return Path(env.get(name) or _state_home(env) / "ducc")


def _cache_dir(env: Env, name: str, default: Any) -> Path | None:
    cache = env.get(name, str(_cache_home(env) / "ducc"))
    return None if cache.lower() in ("", "off", "none") else Path(cache)


def _docker_config(env: Env, name: str, default: Any) -> Path:
    if env.get(name):
        return Path(env[name]) / "config.json"
    return Path(env.get("HOME") or Path.home()) / ".docker" / "config.json"


def _log_level(env: Env, name: str, default: Any) -> str:
    return (env.get(name) or default).upper()


PUBLISHERS = ("directory", "cvmfs")


def _publisher(env: Env, name: str, default: Any) -> str:
    return _choice(*PUBLISHERS)(env, name, "cvmfs" if env.get("DUCC_CVMFS_REPO") else default)


def _redis_password(env: Env, name: str, default: Any) -> str | None:
    password = read_secret(env, name)
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


def _output_password(env: Env, name: str, default: Any) -> str | None:
    return read_secret(env, name) or read_secret(env, "DUCC_OUTPUT_REGISTRY_PASS")  # the name CVMFS's DUCC reads


def _lease(env: Env, name: str, default: Any) -> int:
    # A lease is renewed every third of it: under 3 s the renewals would be under a second apart.
    return max(3, int(_int(env, name, default)))


def _tokens(env: Env, name: str, default: Any) -> dict[str, str]:
    """``NAME`` under ``""`` and every ``NAME_<SOURCE>`` under ``<source>`` (each also as ``_FILE``)."""
    sources = {""}
    for variable in env:
        if variable.startswith(name + "_"):
            source = variable[len(name) + 1:]
            source = source[: -len("_FILE")] if source.endswith("_FILE") else source
            sources.add("" if source == "" else source.lower())
    found = {}
    for source in sources:
        value = read_secret(env, f"{name}_{source.upper()}" if source else name)
        if value:
            found[source] = value
    return found


# --- declarations ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variable:
    """One environment variable: ``shown`` is how the README's table names it (with ``_FILE`` for a
    secret), ``default`` the default as the README states it."""

    name: str
    meaning: str
    default: str
    read: Reader
    shown: str


def _default_text(default: Any) -> str:
    """The default as the README's table shows it: a switch is ``off``, no value an empty cell."""
    if default is False:
        return "off"
    if default is MISSING or default is None or default == ():
        return ""
    if isinstance(default, str):
        return f"`{default}`"
    return str(default)


def setting(name: str, meaning: str, *, default: Any = MISSING, default_text: str | None = None,
            read: Reader = _text, shown: str | None = None, secret: bool = False, factory: Any = MISSING) -> Any:
    """A field set by the variable ``name``: the declaration the loader and the README's table read.

    ``secret``: also read from ``NAME_FILE``, and never in the repr. ``default_text``: the default as the
    README states it, where the field's default does not say it (one computed from the environment)."""
    text = _default_text(default) if default_text is None else default_text
    shown = shown or (f"`{name}` or `{name}_FILE`" if secret else f"`{name}`")
    variable = Variable(name, meaning, text, _secret if secret and read is _text else read, shown)
    if factory is not MISSING:
        return field(default_factory=factory, repr=not secret, metadata={"variable": variable})
    return field(default=default, repr=not secret, metadata={"variable": variable})


def section(kind: type) -> Any:
    """A field that holds a section (its defaults unless given): the loader reads the section's own
    variables into it."""
    return field(default_factory=kind, metadata={"section": kind})


@dataclass(frozen=True)
class CvmfsSettings:
    """CVMFS publisher: publishing into a CernVM-FS repository through `cvmfs_server` (docs/publishing.md)."""

    repo: str | None = setting(
        "DUCC_CVMFS_REPO", "`REPO[/subdir]`: publish into this repository, and optionally into the directory in "
        "it that ducc's layout lives under (`--cvmfs-repo`)", default=None)
    server: str = setting("DUCC_CVMFS_SERVER", "the `cvmfs_server` command", default="cvmfs_server",
                          default_text="`cvmfs_server` on `PATH`")
    mount: Path | None = setting(
        "DUCC_CVMFS_MOUNT", "where the repository is mounted on this publisher: the paths users are given, and "
        "what a writer reads inside its own transaction (outside it, the spool's read-only mount)", default=None, default_text="`/cvmfs/<repo>`", read=_path)
    gateway: bool = setting(
        "DUCC_CVMFS_GATEWAY", "`1`: a gateway publisher (each node its own transaction, leases on sub-paths)",
        default=False, read=_flag)
    stratum1_urls: tuple[str, ...] = setting(
        "DUCC_STRATUM1_URLS", "comma-separated stratum 1s, `http://host[:port]` or `http://host/cvmfs/<repo>`, "
        "polled until they serve each new revision", default=(), read=_list)
    stratum1_timeout: int = setting("DUCC_STRATUM1_TIMEOUT", "seconds to wait for the stratum 1s, per image",
                                    default=1800, read=_int)


@dataclass(frozen=True)
class RedisSettings:
    """Redis: the queue, locks and job status."""

    url: str | None = setting(
        "DUCC_REDIS_URL", "Redis for the queue, locks and job status (`redis://…`, `unix://…`); unset: "
        "`ducc serve` runs its own", default=None)
    password: str | None = setting(
        "DUCC_REDIS_PASSWORD", "the password of that Redis, kept out of the URL so it never appears in a "
        "process's arguments or a log line (a password in the URL works too, but not both)",
        default=None, secret=True, read=_redis_password)
    fsync: str = setting(
        "DUCC_REDIS_FSYNC", "embedded Redis append-only file: `everysec` (nothing lost when any process "
        "crashes, a power cut may lose the last second) or `always`", default="everysec",
        read=_choice("everysec", "always"))


@dataclass(frozen=True)
class RegistrySettings:
    """Registries: how ducc reaches them, what one may cost, the credentials it offers them."""

    insecure: frozenset[str] = setting(
        "DUCC_INSECURE_REGISTRIES", "comma-separated hosts reached over plain HTTP (loopback always is)",
        default=frozenset(), default_text="", read=_hosts)
    retry_attempts: int = setting(
        "DUCC_RETRY_ATTEMPTS", "attempts per registry request, the one retry policy (backoff, `Retry-After` "
        "honoured; a blob download that breaks off is resumed with `Range` from the same budget)",
        default=5, read=_int)
    min_transfer_rate: int = setting(
        "DUCC_MIN_TRANSFER_RATE", "bytes/s: every registry transfer (a manifest, a token, a blob with its "
        "resumptions) may take `DUCC_MIN_TRANSFER_TIME` plus its size at this rate, then it is cut off "
        "(temporary: the job is retried later). Only a registry that trickles is affected",
        default=DEFAULT_MIN_TRANSFER_RATE, default_text="16384 (16 KiB/s)", read=_positive)
    min_transfer_time: int = setting(
        "DUCC_MIN_TRANSFER_TIME", "seconds every registry transfer may take, however small",
        default=DEFAULT_MIN_TRANSFER_TIME, read=_positive)
    max_tag_pages: int = setting(
        "DUCC_MAX_TAG_PAGES", "most pages one repository's tag list (a tag glob) may have; a registry whose "
        "`Link` chain goes on is refused with one line, never read as a shorter list",
        default=DEFAULT_MAX_TAG_PAGES, read=_positive)
    max_tags: int = setting(
        "DUCC_MAX_TAGS", "most tags one repository's tag list may have; more is refused like too many pages",
        default=DEFAULT_MAX_TAGS, default_text="100,000", read=_positive)
    user: str | None = setting("DUCC_REGISTRY_USER", "the user of the credentials for `DUCC_REGISTRY_HOSTS`",
                               default=None)
    password: str | None = setting("DUCC_REGISTRY_PASSWORD", "the password of that user", default=None,
                                   secret=True)
    hosts: tuple[str, ...] = setting("DUCC_REGISTRY_HOSTS", "comma-separated registry hosts the credentials "
                                     "are for", default=(), read=_list)
    docker_config: Path | None = setting(
        "DOCKER_CONFIG", "directory of a Docker `config.json` (auths, credsStore, credHelpers)",
        default=None, default_text="`~/.docker`", read=_docker_config)


@dataclass(frozen=True)
class ThinSettings:
    """Thin images: where their layers are named and who pushes them."""

    cvmfs_repo: str | None = setting(
        "DUCC_THIN_CVMFS_REPO", "`REPO[/subdir]`: the CVMFS repository the `cvmfs://` layer URLs of thin images "
        "name when neither `DUCC_CVMFS_REPO` (`--cvmfs-repo`) nor the wishlist's `cvmfs_repo` names one (a "
        "directory root that is exported into CVMFS); with none of the three a thin image is refused, never "
        "named after the root", default=None)
    registry_user: str | None = setting(
        "DUCC_OUTPUT_REGISTRY_USER", "the account that pushes thin images, offered only to the thin image's "
        "registry", default=None, default_text="the wishlist's `user`")
    registry_password: str | None = setting(
        "DUCC_OUTPUT_REGISTRY_PASSWORD", "the password of that account (DUCC's `DUCC_OUTPUT_REGISTRY_PASS` too)",
        default=None, secret=True, read=_output_password)


@dataclass(frozen=True)
class CacheSettings:
    """Blob cache: verified blobs kept between conversions."""

    dir: Path | None = setting("DUCC_CACHE_DIR", "verified blob cache (`off` disables)", default=None,
                               default_text="`$XDG_CACHE_HOME/ducc`", read=_cache_dir)
    max_bytes: int = setting(
        "DUCC_CACHE_MAX_BYTES", "cache budget, pruned oldest first after every blob (by every process: CLI and "
        "workers)", default=10 << 30, default_text="10 GiB", read=_int)


@dataclass(frozen=True)
class PodmanSettings:
    """Podman's additional image store: converted images that podman runs without pulling (docs/podman.md)."""

    store: Path | None = setting(
        "DUCC_PODMAN_STORE", "a directory: also write each image converted for `DUCC_PLATFORM` into podman's "
        "additional image store there (`--podman-store`; root only); unset: no store", default=None, read=_path)


@dataclass(frozen=True)
class LimitSettings:
    """Limits: what one image may be and write; beyond them it is refused (admission: docs/design.md §1)."""

    max_image_bytes: int = setting(
        "DUCC_MAX_IMAGE_BYTES", "uncompressed bytes of files one conversion may write (summed over the layers "
        "it unpacks; layers already published cost nothing)", default=DEFAULT_MAX_IMAGE_BYTES,
        default_text="100 GiB (`107374182400`)", read=_positive)
    max_layer_entries: int = setting(
        "DUCC_MAX_LAYER_ENTRIES", "tar entries (files, directories, links, whiteouts) one layer may have: large "
        "software stacks ship a few hundred thousand files, millions of empty ones would only exhaust inodes",
        default=DEFAULT_MAX_LAYER_ENTRIES, default_text="1,000,000", read=_positive)
    max_path_depth: int = setting(
        "DUCC_MAX_PATH_DEPTH", "levels of directories in one path of an image (`a/b/c` is 3; hardlink targets "
        "too): real images nest a few dozen, thousands are an attack on whatever walks the tree",
        default=DEFAULT_MAX_PATH_DEPTH, read=_positive)
    max_path_bytes: int = setting(
        "DUCC_MAX_PATH_BYTES", "bytes of one path of an image (hardlink targets too): real paths are a few "
        "hundred bytes; the default keeps every published path, with the repository's own prefix, under "
        "`PATH_MAX` (4,096) so that ordinary tools on the nodes can open it", default=DEFAULT_MAX_PATH_BYTES,
        default_text="3,072", read=_positive)
    max_layers: int | None = setting(
        "DUCC_MAX_LAYERS", "layers an image's manifest may list; an image with more is refused before any layer "
        "is downloaded (admission)", default=None, default_text="no limit", read=_positive)
    max_compressed_bytes: int | None = setting(
        "DUCC_MAX_COMPRESSED_BYTES", "compressed bytes an image's manifest may declare for its distinct layers; "
        "more is refused before any layer is downloaded (admission)", default=None, default_text="no limit",
        read=_positive)


@dataclass(frozen=True)
class SyncSettings:
    """Wishlist sync: what the scheduled sync reads, when, and how much at once."""

    wishlist: Path | None = setting("DUCC_WISHLIST", "wishlist the scheduled sync reads", default=None, read=_path)
    schedule: str = setting("DUCC_SYNC_SCHEDULE", "cron expression of the wishlist sync (UTC)", default="0 3 * * *")
    concurrency: int = setting("DUCC_SYNC_CONCURRENCY", "images checked/converted at once by `sync`", default=4,
                               read=_int)
    registry_concurrency: int = setting(
        "DUCC_REGISTRY_CONCURRENCY", "manifest checks at once against one registry during a sync", default=8,
        read=_int)
    unpublish_removed_wishes: bool = setting(
        "DUCC_UNPUBLISH_REMOVED_WISHES", "`1`: the scheduled sync unpublishes the tags it had published that "
        "left the wishlist", default=False, read=_flag)


@dataclass(frozen=True)
class GcSettings:
    """Garbage collection: how long unreferenced content stays, and when the service collects it."""

    grace: int = setting(
        "DUCC_GC_GRACE", "how long a flat root or layer stays after ducc saw it become unreferenced (a DURATION: "
        "seconds, or `90s`, `30m`, `12h`, `7d`); `ducc gc --grace` overrides it", default=7 * 86400,
        default_text="`7d`", read=_duration)
    schedule: str = setting("DUCC_GC_SCHEDULE", "cron expression of the service's garbage collection (UTC)",
                            default="0 4 * * 0", default_text="`0 4 * * 0` (weekly)")


@dataclass(frozen=True)
class WebSettings:
    """Web app: webhooks, the REST API and the status page."""

    listen: str = setting("DUCC_LISTEN", "address of the web app", default="127.0.0.1:8080")
    tokens: Mapping[str, str] = setting(
        "DUCC_WEBHOOK_TOKEN", "webhook and API tokens: one for every source, or one source's own",
        factory=dict, default_text="", read=_tokens, secret=True,
        shown="`DUCC_WEBHOOK_TOKEN` (`_FILE`), `DUCC_WEBHOOK_TOKEN_<SOURCE>` (`_FILE`)")
    allow: tuple[str, ...] = setting("DUCC_ALLOW", "comma-separated globs of images webhooks and the API may "
                                     "convert", default=(), read=_list)
    max_bytes: int = setting("DUCC_WEBHOOK_MAX_BYTES", "largest request body", default=1 << 20,
                             default_text="1 MiB", read=_int)
    unpublish_on_delete: bool = setting(
        "DUCC_UNPUBLISH_ON_DELETE", "`1`: a registry `delete` notification unpublishes the tag, once the "
        "registry answers its manifest with a clean 404", default=False, read=_flag)


@dataclass(frozen=True)
class JobSettings:
    """Jobs: how workers run them, retry them and keep their records."""

    worker_concurrency: int = setting("DUCC_WORKER_CONCURRENCY", "conversions one worker runs at once", default=2,
                                      read=_int)
    lease: int = setting("DUCC_JOB_LEASE", "seconds before a silent worker's job is requeued and its locks "
                         "freed (at least 3)", default=30, read=_lease)
    retry_base: int = setting("DUCC_JOB_RETRY_BASE", "seconds before the first retry of a temporary failure "
                              "(doubling, at most 1 h)", default=30, read=_int)
    max_attempts: int = setting("DUCC_JOB_MAX_ATTEMPTS", "attempts of a job before it fails for good", default=8,
                                read=_int)
    ttl: int = setting("DUCC_JOB_TTL", "seconds job records are kept", default=14 * 86400,
                       default_text="14 days", read=_int)


@dataclass(frozen=True)
class Settings:
    """General: where ducc publishes, for which platform, and how it runs; the rest of the settings are
    in the sections below, one per concern (``settings.redis``, ``settings.jobs`` …)."""

    root: Path = setting("DUCC_ROOT", "repository root (directory publisher)",
                         default_text="`$XDG_DATA_HOME/ducc/root`", read=_root)
    publisher: str = setting(
        "DUCC_PUBLISHER", "the repository backend: `directory` or `cvmfs` (see \"Publishing into a CernVM-FS "
        "repository\")", default="directory",
        default_text="`cvmfs` if `DUCC_CVMFS_REPO` is set, else `directory`", read=_publisher)
    repository: str | None = setting(
        "DUCC_REPOSITORY", "the repository's name, which serialises writers on every host (hosts that mount one "
        "export at different paths agree on it)", default=None,
        default_text="a name stored in the root (`.ducc-repository`) on first use")
    platform: Platform = setting("DUCC_PLATFORM", "platform taken from multi-arch images",
                                 default=Platform("linux", "amd64"), default_text="`linux/amd64`",
                                 read=_platform)
    parallel_layers: int = setting("DUCC_PARALLEL_LAYERS", "layers fetched and unpacked at once per image",
                                   default=3, read=_int)
    state_dir: Path = setting("DUCC_STATE_DIR", "embedded Redis data, beat schedule, CVMFS staging and "
                              "garbage-collection state", default=Path("/var/lib/ducc"),
                              default_text="`$XDG_STATE_HOME/ducc`", read=_state_dir)
    fsync: bool = setting("DUCC_FSYNC", "`1`: flush the filesystem before each record (power-loss safety)",
                          default=False, read=_flag)
    log_level: str = setting("DUCC_LOG_LEVEL", "`DEBUG`, `INFO`, `WARNING`", default="INFO", read=_log_level)
    cvmfs: CvmfsSettings = section(CvmfsSettings)
    redis: RedisSettings = section(RedisSettings)
    registry: RegistrySettings = section(RegistrySettings)
    thin: ThinSettings = section(ThinSettings)
    cache: CacheSettings = section(CacheSettings)
    podman: PodmanSettings = section(PodmanSettings)
    limits: LimitSettings = section(LimitSettings)
    sync: SyncSettings = section(SyncSettings)
    gc: GcSettings = section(GcSettings)
    web: WebSettings = section(WebSettings)
    jobs: JobSettings = section(JobSettings)
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
        return replace(self, publisher="cvmfs", cvmfs=replace(self.cvmfs, repo=repo), env=env)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Every variable of every section, read from ``env`` (default: this process's environment)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {"env": env}
        for top in fields(cls):
            kind = top.metadata.get("section")
            if kind is not None:
                values[top.name] = kind(**{f.name: _read(f, env) for f in fields(kind)})
            elif "variable" in top.metadata:
                values[top.name] = _read(top, env)
        return cls(**values)


def _read(declared: Field[Any], env: Env) -> Any:
    variable: Variable = declared.metadata["variable"]
    return variable.read(env, variable.name, declared.default)


# --- the README's table ---------------------------------------------------------------------------------

SECTIONS: dict[str, type] = {"": Settings, **{f.name: f.metadata["section"] for f in fields(Settings)
                                               if "section" in f.metadata}}


def variables(section_name: str = "") -> list[Variable]:
    """The variables of one section (``""``: the top level), in the order they are declared."""
    return [f.metadata["variable"] for f in fields(SECTIONS[section_name]) if "variable" in f.metadata]


def markdown(section_name: str | None = None) -> str:
    """The README's table: every section under its title (the first line of its docstring), or one section
    alone (``cvmfs``) as a bare table."""
    def table(rows: list[Variable]) -> list[str]:
        return ["| variable | meaning | default |", "|---|---|---|",
                *(f"| {v.shown} | {v.meaning} |{f' {v.default} ' if v.default else ' '}|" for v in rows)]

    if section_name is not None:
        return "\n".join(table(variables(section_name))) + "\n"
    blocks = []
    for name, kind in SECTIONS.items():
        title = (kind.__doc__ or name).partition(":")[0]
        attribute = f"settings.{name}" if name else "settings"
        blocks.append("\n".join([f"**{title}** (`{attribute}`)", "", *table(variables(name))]))
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str]) -> int:
    """``python -m ducc.settings --markdown [SECTION]``: print the README's table of variables."""
    if not argv or argv[0] != "--markdown" or len(argv) > 2 or (len(argv) == 2 and argv[1] not in SECTIONS):
        print(f"usage: python -m ducc.settings --markdown [{'|'.join(n for n in SECTIONS if n)}]", file=sys.stderr)
        return 2
    sys.stdout.write(markdown(argv[1] if len(argv) == 2 else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
