"""Connections to Redis (job status, locks) and the Celery app (the queue), built from settings.

Light on purpose: nothing here imports what converts (``ducc.service.tasks``
registers the task bodies in worker processes only), and Celery is imported only by
the functions that build a Celery object, so the web app, which needs a Redis client,
never loads it. ``ducc.wiring`` calls these.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from ducc.service import keys
from ducc.service.queue import GC_TASK, RECONCILE_TASK, SYNC_TASK
from ducc.settings import Settings

if TYPE_CHECKING:
    from celery import Celery
    from celery.schedules import crontab

# Seconds a Redis command or connection may take. A Redis that stops answering (a network partition, a
# stopped process) must be an error the caller handles (a 503, a heartbeat retried at its next tick, a
# lease found lost), never a hang: no command ducc sends blocks on the server side.
REDIS_TIMEOUT = 5.0


def build_redis(url: str, password: str | None = None, *, timeout: float = REDIS_TIMEOUT) -> redis.Redis:
    """A client of the Redis at ``url``; ``password`` (kept out of the URL) authenticates it. Every command
    and connection gives up after ``timeout`` seconds with ``redis.TimeoutError``/``ConnectionError``."""
    # One quick retry of a dropped connection (a restarted Redis); none of a timeout: redis-py's default
    # retries it three times, which would make a silent Redis cost four timeouts per command.
    retry = Retry(ConstantBackoff(0.1), 1, supported_errors=(redis.ConnectionError,))
    client: redis.Redis = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30,
                                               password=password, socket_timeout=timeout,
                                               socket_connect_timeout=timeout, retry=retry)
    return client


def display_url(url: str) -> str:
    """``url`` as messages show it: any password in it replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def broker_url(redis_url: str) -> str:
    """kombu spells Redis over a unix socket ``redis+socket://``; redis-py ``unix://``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://"):]
    return redis_url


def parse_cron(
    expression: str, name: str = "DUCC_SYNC_SCHEDULE", nowfun: Callable[[], datetime] | None = None
) -> crontab:
    """Celery's crontab for ``expression``: what beat runs (``ducc.schedule`` reads the same expressions the
    same way without Celery, for the status page); a ValueError naming the setting ``name``."""
    from celery.schedules import crontab

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"{name} {expression!r} is not a 5-field cron expression")
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month,
                       day_of_week=day_of_week, nowfun=nowfun)
    except ValueError as exc:
        raise ValueError(f"{name} {expression!r} is not a valid cron expression: {exc}") from exc


def create_celery(settings: Settings, redis_url: str, password: str | None = None) -> Celery:
    """The Celery app, configured from settings; workers add the task bodies with ``ducc.tasks.register``.

    ``password`` authenticates to Redis without being part of the broker URL (Celery's
    ``broker_password``), so Celery's banner and logs never show it.

    Messages are acknowledged late and rejected when a worker is lost, so the broker redelivers
    them; one task at a time is prefetched, so a long conversion never holds others hostage.
    """
    from celery import Celery

    app = Celery("ducc", broker=broker_url(redis_url), set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_default_queue=keys.CELERY_QUEUE,
        # Timeouts as build_redis's: a worker whose broker stops answering notices, and reconnects.
        broker_transport_options={"visibility_timeout": 6 * 3600, "socket_timeout": REDIS_TIMEOUT,
                                  "socket_connect_timeout": REDIS_TIMEOUT},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "wishlist-sync": {"task": SYNC_TASK, "schedule": parse_cron(settings.sync.schedule)},
            "reconcile": {"task": RECONCILE_TASK, "schedule": float(settings.jobs.lease)},
            "garbage-collection": {"task": GC_TASK, "schedule": parse_cron(settings.gc.schedule, "DUCC_GC_SCHEDULE")},
        },
        timezone="UTC",
    )
    if password:
        app.conf.broker_password = password
    return app
