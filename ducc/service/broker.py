"""Connections to Redis (job status, locks) and the Celery app (the queue), built from settings.

Light on purpose: nothing here imports what converts (``ducc.service.tasks``
registers the task bodies in worker processes only). ``ducc.services`` calls these.
"""

from __future__ import annotations

import redis
from celery import Celery
from celery.schedules import crontab

from ducc.service import keys
from ducc.service.queue import GC_TASK, RECONCILE_TASK, SYNC_TASK
from ducc.settings import Settings


def build_redis(url: str) -> redis.Redis:
    client: redis.Redis = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
    return client


def broker_url(redis_url: str) -> str:
    """kombu spells Redis over a unix socket ``redis+socket://``; redis-py ``unix://``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://"):]
    return redis_url


def parse_cron(expression: str, name: str = "DUCC_SYNC_SCHEDULE") -> crontab:
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"{name} {expression!r} is not a 5-field cron expression")
    minute, hour, day_of_month, month, day_of_week = fields
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month, day_of_week=day_of_week)


def create_celery(settings: Settings, redis_url: str) -> Celery:
    """The Celery app, configured from settings; workers add the task bodies with ``ducc.tasks.register``.

    Messages are acknowledged late and rejected when a worker is lost, so the broker redelivers
    them; one task at a time is prefetched, so a long conversion never holds others hostage.
    """
    app = Celery("ducc", broker=broker_url(redis_url), set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_default_queue=keys.CELERY_QUEUE,
        broker_transport_options={"visibility_timeout": 6 * 3600},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "wishlist-sync": {"task": SYNC_TASK, "schedule": parse_cron(settings.sync_schedule)},
            "reconcile": {"task": RECONCILE_TASK, "schedule": float(settings.job_lease)},
            "garbage-collection": {"task": GC_TASK, "schedule": parse_cron(settings.gc_schedule, "DUCC_GC_SCHEDULE")},
        },
        timezone="UTC",
    )
    return app
