"""The web app: webhooks from registries and a REST API turning requests into conversion jobs.

``create_app(settings, queue=..., jobs=...)`` is the factory (collaborators can be
passed in; by default they are built from settings). The app never converts
anything itself: it records and queues (``ducc.queue``) and reports (``ducc.jobs``).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify

from ducc.broker import build_redis, create_celery
from ducc.jobs import JobStore
from ducc.queue import Queue
from ducc.settings import Settings


def create_app(settings: Settings | None = None, *, queue: Queue | None = None, jobs: JobStore | None = None) -> Flask:
    settings = settings or Settings.from_env()
    if queue is None or jobs is None:
        client = build_redis(settings)
        celery = create_celery(settings)
        jobs = jobs or JobStore(client, ttl=settings.job_ttl)
        queue = queue or Queue(client, jobs, lambda name, args: celery.send_task(name, args=args))
    app = Flask("ducc")
    app.config["DUCC_SETTINGS"] = settings
    job_store = jobs

    @app.get("/healthz")
    def healthz() -> Any:
        try:
            job_store.redis.ping()
        except Exception as exc:  # any failure to reach Redis means "not healthy"
            return jsonify({"status": "unhealthy", "redis": str(exc)}), 503
        return jsonify({"status": "ok"})

    @app.get("/api/v1/conversions/<job_id>")
    def conversion(job_id: str) -> Any:
        job = job_store.get(job_id)
        if job is None:
            return jsonify({"error": f"no job {job_id}"}), 404
        return jsonify(job.to_json())

    return app
