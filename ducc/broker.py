"""Connections to Redis (job status, locks) and the Celery app (the queue), built from settings.

Light on purpose: the web process uses this to send tasks by name and read job
status without importing anything that converts (``ducc.tasks`` registers the
task bodies in worker processes only).
"""

from __future__ import annotations

import redis
from celery import Celery
from celery.schedules import crontab

from ducc.queue import RECONCILE_TASK, SYNC_TASK
from ducc.settings import Settings


def build_redis(settings: Settings) -> redis.Redis:
    if not settings.redis_url:
        raise ValueError("DUCC_REDIS_URL is not set (ducc serve starts its own Redis and sets it)")
    client: redis.Redis = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
    return client


def broker_url(redis_url: str) -> str:
    """kombu spells Redis over a unix socket ``redis+socket://``; redis-py ``unix://``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://"):]
    return redis_url


def parse_cron(expression: str) -> crontab:
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"DUCC_SYNC_SCHEDULE {expression!r} is not a 5-field cron expression")
    minute, hour, day_of_month, month, day_of_week = fields
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month, day_of_week=day_of_week)


def create_celery(settings: Settings) -> Celery:
    """The Celery app, configured from settings; workers add the task bodies with ``ducc.tasks.register``.

    Messages are acknowledged late and rejected when a worker is lost, so the broker redelivers
    them; one task at a time is prefetched, so a long conversion never holds others hostage.
    """
    if not settings.redis_url:
        raise ValueError("DUCC_REDIS_URL is not set (ducc serve starts its own Redis and sets it)")
    app = Celery("ducc", broker=broker_url(settings.redis_url), set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_default_queue="ducc",
        broker_transport_options={"visibility_timeout": 6 * 3600},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "wishlist-sync": {"task": SYNC_TASK, "schedule": parse_cron(settings.sync_schedule)},
            "reconcile": {"task": RECONCILE_TASK, "schedule": float(settings.job_lease)},
        },
        timezone="UTC",
    )
    return app
