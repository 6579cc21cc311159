"""The web app: registry webhooks and a REST API turning requests into conversion jobs, a status page.

``create_app(settings, ...)`` is the factory (as the Flask docs shape it): it
takes the few collaborators the app needs (Redis, the queue, the job store, a
maker of the read-only repository view; ``ducc.wiring`` builds any not
given) and registers three blueprints: receivers
(``ducc.web.receivers``, one route per sender of ``ducc.web.senders``), the
REST API (``ducc.web.api``) and the pages (``ducc.web.pages``). The app never
converts anything itself: it authenticates, checks policy, records and queues,
and reports. What the answers mean is documented in ``ducc.web.http``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ducc.publish import RepositoryView
from ducc.service.jobs import JobStore
from ducc.service.queue import Queue
from ducc.settings import Settings
from ducc.web.api import api
from ducc.web.http import BadRequest, Web
from ducc.web.pages import pages
from ducc.web.policy import Policy
from ducc.web.receivers import receivers
from ducc.web.security import Tokens
from ducc.web.senders import TOKEN_SOURCES
from ducc.wiring import Services

log = logging.getLogger("ducc.web")


def create_app(
    settings: Settings | None = None,
    *,
    client: redis.Redis | None = None,
    queue: Queue | None = None,
    jobs: JobStore | None = None,
    view_of: Callable[[], RepositoryView] | None = None,
    tokens: Tokens | None = None,
    policy: Policy | None = None,
) -> Flask:
    """The web app over ``client`` (Redis), ``queue``, ``jobs`` and the repository view ``view_of()`` makes
    at its first use; the composition root builds from ``settings`` whichever is not given (only the light
    ones: the app never builds a converter, a publisher or Celery). Without ``DUCC_REDIS_URL`` and no
    ``ducc serve`` on this machine it raises ``ServiceUnavailable``: the app could answer nothing."""
    settings = settings or Settings.from_env()
    if client is None or queue is None or jobs is None or view_of is None:
        services = Services(settings)
        client = client if client is not None else services.redis
        jobs = jobs if jobs is not None else services.jobs
        queue = queue if queue is not None else services.queue
        view_of = view_of or (lambda: services.view)
    app = Flask("ducc")
    app.config["MAX_CONTENT_LENGTH"] = settings.web.max_bytes
    app.extensions["ducc"] = Web(
        settings=settings,
        redis=client,
        queue=queue,
        jobs=jobs,
        view_of=view_of,
        tokens=tokens or Tokens.of(settings.web.tokens, TOKEN_SOURCES),
        policy=policy or Policy(list(settings.web.allow), settings.sync.wishlist),
    )
    app.register_blueprint(receivers)
    app.register_blueprint(api)
    app.register_blueprint(pages)
    app.register_error_handler(BadRequest, _bad_request)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(redis.RedisError, _redis_down)
    app.register_error_handler(Exception, _internal_error)
    return app


def _bad_request(exc: BadRequest) -> Any:
    response = jsonify({"error": str(exc)})
    response.status_code = exc.status
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="ducc"'
    if exc.status == 503:
        response.headers["Retry-After"] = "5"
    return response


def _http_error(exc: HTTPException) -> Any:
    message = exc.description
    if exc.code == 413:
        message = f"body larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes"
    return jsonify({"error": message}), exc.code


def _redis_down(exc: redis.RedisError) -> Any:
    """Redis (queue, job status) is unreachable: a 503 that says so, for every endpoint that needs it."""
    log.error("answering %s %s: Redis is unreachable: %s", request.method, request.path, exc)
    return jsonify({"error": f"Redis is unreachable: {exc}; retry later"}), 503, {"Retry-After": "10"}


def _internal_error(exc: Exception) -> Any:
    log.exception("unexpected error answering %s %s", request.method, request.path)
    return jsonify({"error": "internal error; see the server log"}), 500
