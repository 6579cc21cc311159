"""Pages for people and monitors: the status page, ``/livez``, ``/healthz`` and Prometheus ``/metrics``.
No token needed.

- ``/livez`` (liveness): the process answers; it touches nothing behind it, so an outage of Redis
  never restarts the web app.
- ``/healthz`` (readiness): 200 while Redis answers; 503 saying what is down otherwise (the app
  cannot record a request without it).
- ``/``: recent jobs and published images; while Redis is down, a 503 page that says so (what
  is published is in the repository and unaffected). The wishlist's rows come a page at a time
  (``?page=N``, ``&per_page=M`` up to ``MAX_PER_PAGE``): a wishlist of a hundred thousand entries
  costs the page only the rows it shows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, render_template_string, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.publish import RepositoryView
from ducc.schedule import next_sync
from ducc.service import lastsync
from ducc.service.jobs import PROPAGATION, Job, JobStore
from ducc.service.metrics import RedisCollector
from ducc.web.http import BadRequest, Web, web
from ducc.wishlist import Wish, Wishlist

pages = Blueprint("pages", __name__)

PER_PAGE = 100  # wishlist rows on one status page, unless ?per_page= asks for another number
MAX_PER_PAGE = 500


@pages.get("/livez")
def livez() -> Any:
    return jsonify({"status": "alive"})


@pages.get("/healthz")
def healthz() -> Any:
    try:
        web().redis.ping()
    except redis.RedisError as exc:
        return jsonify({"status": "unhealthy", "down": ["redis"], "redis": f"unreachable: {exc}"}), 503
    return jsonify({"status": "ok", "redis": "ok"})


@pages.get("/metrics")
def prometheus() -> Any:
    registry: CollectorRegistry | None = current_app.extensions.get("ducc.metrics")
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RedisCollector(web().redis))
        current_app.extensions["ducc.metrics"] = registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@pages.get("/")
def status_page() -> Any:
    context = web()
    root = str(context.view.location)
    page, per_page = _whole(request.args.get("page"), "page", 1), _whole(request.args.get("per_page"), "per_page",
                                                                         PER_PAGE)
    if per_page > MAX_PER_PAGE:
        raise BadRequest(400, f"?per_page= may be at most {MAX_PER_PAGE}")
    try:
        recent = context.jobs.recent_jobs(100)
        wishlist = _wishlist_status(context, page, per_page)
    except redis.RedisError as exc:
        return render_template_string(DOWN_PAGE, root=root, reason=str(exc)), 503, {"Retry-After": "10"}
    published = [j for j in recent if j.state == "published" and not j.coalesced_into]
    return render_template_string(STATUS_PAGE, jobs=recent[:50], published=published[:30], now=time.time(),
                                  root=root, when=_when, wishlist=wishlist, outcome=_outcome,
                                  propagation=_propagation)


def _whole(text: str | None, name: str, default: int) -> int:
    """A query parameter that counts (1 or more); 400 otherwise."""
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise BadRequest(400, f"?{name}= must be a whole number of 1 or more")
    return int(text)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"


def _outcome(job: Job) -> str:
    """The last word of the timeline on the conversion itself (propagation events come after it)."""
    return next((e.get("detail", "") for e in reversed(job.events) if e.get("kind") != PROPAGATION), "")


def _propagation(job: Job) -> list[str]:
    """Where the job's revision is visible: "visible on <host> at <time>", or not within the time limit."""
    return [e.get("detail", "") for e in job.events if e.get("kind") == PROPAGATION]


@dataclass(frozen=True)
class WishRow:
    """One line of the wishlist table: an image a wish stands for (or the wish alone), and its state."""

    wish: str
    image: str
    platform: str
    state: str  # published, queued (or a stage), retrying, failed, cancelled, not yet converted, ...
    detail: str = ""
    job: str = ""


@dataclass(frozen=True)
class WishlistStatus:
    """The wishlist table: the rows of one page (``page`` of ``pages``, ``total`` rows in all)."""

    path: str
    problem: str | None
    rows: list[WishRow]
    last_sync: float | None
    next_sync: str
    schedule: str
    page: int = 1
    pages: int = 1
    per_page: int = PER_PAGE
    total: int = 0

    @property
    def first(self) -> int:
        """The number of the page's first row (1 for the first page)."""
        return (self.page - 1) * self.per_page + 1


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A row whose state is not looked up yet: the table knows every row, but reads the jobs and the
    repository only for the rows of the page it shows. One of ``row`` (known already), ``outcome`` (what
    the last sync did for an image) or ``platform`` (an image no sync has checked yet)."""

    wish: Wish
    row: WishRow | None = None
    outcome: lastsync.ImageOutcome | None = None
    platform: Platform | None = None

    def resolve(self, context: Web) -> WishRow:
        if self.row is not None:
            return self.row
        if self.outcome is not None:
            return _image_row(self.wish, self.outcome, context.jobs)
        assert self.platform is not None
        return _record_row(self.wish, self.platform, context.view)


def _wishlist_status(context: Web, page: int = 1, per_page: int = PER_PAGE) -> WishlistStatus | None:
    """The configured wishlist's entries with their state, the rows of ``page`` (the last page if there are
    fewer): from the last sync's outcome per image, the jobs it queued and, for an image no sync has checked
    yet, the repository's record. None without a wishlist."""
    settings = context.settings
    if settings.sync.wishlist is None:
        return None
    wishlist = context.policy.wishlist()
    last = lastsync.read(context.redis)
    schedule = settings.sync.schedule
    try:
        upcoming = _when(next_sync(schedule, datetime.now(UTC)).timestamp())
    except ValueError as exc:
        upcoming = f"never ({exc})"
    pending = [] if wishlist is None else _pending_rows(wishlist, last)
    pages = max(1, math.ceil(len(pending) / per_page))
    page = min(page, pages)
    shown = [row.resolve(context) for row in pending[(page - 1) * per_page:page * per_page]]
    return WishlistStatus(str(settings.sync.wishlist), context.policy.problem, shown, last.at if last else None, upcoming,
                          schedule, page, pages, per_page, len(pending))


def _pending_rows(wishlist: Wishlist, last: lastsync.LastSync | None) -> list[PendingRow]:
    """Every row of the table, their state not looked up. They change only with the wishlist (a new object
    when its file changes) and the last sync, so the process keeps them for the next page while both stay."""
    at = last.at if last else None
    kept = current_app.extensions.get("ducc.wishlist_rows")
    if kept is not None and kept[0] is wishlist and kept[1] == at:
        rows: list[PendingRow] = kept[2]
        return rows
    checked: dict[tuple[str, str], list[tuple[Reference, lastsync.ImageOutcome]]] = {}
    for outcome in last.images if last else ():
        ref = Reference.parse(outcome.image)
        checked.setdefault((ref.registry, ref.repository), []).append((ref, outcome))
    rows = [row for wish in wishlist.wishes for row in _wish_rows(wish, last, checked)]
    current_app.extensions["ducc.wishlist_rows"] = (wishlist, at, rows)
    return rows


def _wish_rows(wish: Wish, last: lastsync.LastSync | None,
               checked: dict[tuple[str, str], list[tuple[Reference, lastsync.ImageOutcome]]]) -> list[PendingRow]:
    """The rows of ``wish``, their state not looked up yet."""
    if last is not None and wish.text in last.wish_failures:
        return [PendingRow(wish, WishRow(wish.text, "", "", "failed", last.wish_failures[wish.text]))]
    rows = [PendingRow(wish, outcome=outcome) for ref, outcome in checked.get((wish.registry, wish.repository), [])
            if wish.covers(ref)]
    if rows:
        return rows
    if wish.is_pattern:
        detail = "no tag matched at the last sync" if last else "its tags are listed at the first sync"
        return [PendingRow(wish, WishRow(wish.text, "", "", "not yet converted", detail))]
    return [PendingRow(wish, platform=platform) for platform in wish.platforms]


def _record_row(wish: Wish, platform: Platform, view: RepositoryView) -> WishRow:
    """The image of a wish without a glob that no sync has checked yet: published if the repository has
    its record."""
    (ref,) = wish.expand(())
    published = view.read_record(ref, platform) is not None
    return WishRow(wish.text, str(ref), str(platform), "published" if published else "not yet converted",
                   "" if published else "waiting for the next sync")


def _image_row(wish: Wish, outcome: lastsync.ImageOutcome, jobs: JobStore) -> WishRow:
    if outcome.outcome == "failed":
        return WishRow(wish.text, outcome.image, outcome.platform, "failed", outcome.error)
    if outcome.outcome == "unchanged":
        return WishRow(wish.text, outcome.image, outcome.platform, "published", "current at the last sync")
    job = jobs.get(outcome.job)
    if job is None:
        return WishRow(wish.text, outcome.image, outcome.platform, "queued", "its job record has expired", outcome.job)
    return WishRow(wish.text, outcome.image, outcome.platform, job.state, job.error or _outcome(job), outcome.job)


STATUS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ducc</title>
<meta http-equiv="refresh" content="10">
<style>
 body{font-family:system-ui,sans-serif;margin:2em;color:#222}
 table{border-collapse:collapse;width:100%;margin-bottom:2em;font-size:90%}
 th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left}
 .published{color:#176f2c}.failed{color:#b00020}.retrying{color:#a15c00}.cancelled{color:#666}
 code{font-size:95%}
</style></head><body>
<h1>ducc</h1>
<p>Repository root <code>{{ root }}</code>. This page refreshes every 10 s;
JSON at <code>/api/v1/conversions/&lt;id&gt;</code> and <code>/api/v1/images?ref=…</code>.</p>
{% if wishlist %}
<h2>Wishlist</h2>
<p><code>{{ wishlist.path }}</code>:
{% if wishlist.last_sync %}last synced {{ when(wishlist.last_sync) }}{% else %}not synced yet{% endif %};
next sync {{ wishlist.next_sync }} (<code>DUCC_SYNC_SCHEDULE</code> <code>{{ wishlist.schedule }}</code>, UTC).</p>
{% if wishlist.problem %}<p class="failed">{{ wishlist.problem }}: nothing in it is converted or allowed.</p>{% endif %}
<table><tr><th>entry</th><th>image</th><th>platform</th><th>state</th><th>detail</th></tr>
{% for r in wishlist.rows %}<tr>
 <td><code>{{ r.wish }}</code></td><td>{{ r.image }}</td><td>{{ r.platform }}</td>
 <td class="{{ r.state }}">{% if r.job %}<a href="/api/v1/conversions/{{ r.job }}">{{ r.state }}</a>{% else %}{{ r.state }}{% endif %}</td>
 <td>{{ r.detail }}</td>
</tr>{% else %}<tr><td colspan="5">no entries</td></tr>{% endfor %}
</table>
{% if wishlist.pages > 1 %}<p class="pager">rows {{ wishlist.first }}–{{ wishlist.first + wishlist.rows|length - 1 }}
of {{ wishlist.total }} (page {{ wishlist.page }} of {{ wishlist.pages }}):
{% if wishlist.page > 1 %}<a href="?page=1&amp;per_page={{ wishlist.per_page }}">first</a>
<a href="?page={{ wishlist.page - 1 }}&amp;per_page={{ wishlist.per_page }}" rel="prev">previous</a>{% endif %}
{% if wishlist.page < wishlist.pages %}<a href="?page={{ wishlist.page + 1 }}&amp;per_page={{ wishlist.per_page }}" rel="next">next</a>
<a href="?page={{ wishlist.pages }}&amp;per_page={{ wishlist.per_page }}">last</a>{% endif %}</p>{% endif %}
{% endif %}
<h2>Recent jobs</h2>
<table><tr><th>job</th><th>image</th><th>platform</th><th>from</th><th>received</th><th>state</th><th>took</th><th>detail</th></tr>
{% for j in jobs %}<tr>
 <td><a href="/api/v1/conversions/{{ j.id }}"><code>{{ j.id }}</code></a></td><td>{{ j.image }}</td><td>{{ j.platform }}</td>
 <td>{{ j.source }}</td><td>{{ when(j.received_at) }}</td><td class="{{ j.state }}">{{ j.state }}</td>
 <td>{{ "%.1f s"|format(j.updated_at - j.received_at) }}</td>
 <td>{{ j.error or outcome(j) }}{% if j.coalesced_into %} (with {{ j.coalesced_into }}){% endif %}
 {% for p in propagation(j) %}<br>{{ p }}{% endfor %}</td>
</tr>{% else %}<tr><td colspan="8">no jobs yet</td></tr>{% endfor %}
</table>
<h2>Recently published</h2>
<table><tr><th>image</th><th>path</th><th>layers unpacked / reused</th><th>conversion</th><th>finished</th>
<th>revision, visible on</th></tr>
{% for j in published %}<tr>
 <td>{{ j.image }}</td><td><code>{{ j.result.path }}</code></td>
 <td>{{ j.result.layers_unpacked }} / {{ j.result.layers_reused }}</td>
 <td>{{ "%.1f s"|format(j.result.seconds or 0) }}{% if not j.result.changed %} (already current){% endif %}</td>
 <td>{{ when(j.updated_at) }}</td>
 <td>{% if j.result.revision %}revision {{ j.result.revision }}{% endif %}
 {% for p in propagation(j) %}<br>{{ p }}{% endfor %}</td>
</tr>{% else %}<tr><td colspan="6">nothing published yet</td></tr>{% endfor %}
</table>
</body></html>
"""

DOWN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ducc: Redis unreachable</title>
<meta http-equiv="refresh" content="10">
<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222} .down{color:#b00020} code{font-size:95%}</style>
</head><body>
<h1>ducc</h1>
<p class="down"><strong>Redis is unreachable</strong>: {{ reason }}</p>
<p>Redis holds the queue and the job timelines, so no request can be accepted and no job shown until it is
back; nothing accepted earlier is lost, and the images already published under <code>{{ root }}</code> are
unaffected. <code>/healthz</code> says the same to monitors. This page refreshes every 10 s.</p>
</body></html>
"""
