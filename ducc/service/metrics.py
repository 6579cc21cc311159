"""Prometheus metrics kept in Redis, so every web process, worker and host adds to the same numbers
and any web process can serve them (gunicorn runs several).

- ``ducc_webhook_requests_total{source,outcome}``  accepted, coalesced, duplicate (counted by the queue),
  ignored, unauthorized, bad_request, unavailable
- ``ducc_queue_depth``                              jobs waiting for a worker (incoming and in the broker)
- ``ducc_jobs_in_flight``                           tasks taken by a worker and not yet acknowledged
- ``ducc_conversions_total{result}``                published, unchanged, failed
- ``ducc_conversion_duration_seconds``              histogram of conversion wall time
- ``ducc_gc_deleted_total{kind}``                   layers and flat roots garbage collection deleted
- ``ducc_gc_bytes_freed_total``                     bytes of the files under what it deleted
- ``ducc_repository_bytes{kind}``                   layers, flats: bytes of the files under each, as the
                                                    last garbage collection measured them
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ducc.service import keys

BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def record_request(client: redis.Redis, source: str, outcome: str, count: int = 1) -> None:
    client.hincrby(keys.METRICS_REQUESTS, f"{source}|{outcome}", count)


def record_conversion(client: redis.Redis, result: str, seconds: float) -> None:
    pipe = client.pipeline()
    pipe.hincrby(keys.METRICS_CONVERSIONS, result, 1)
    for bound in BUCKETS:
        if seconds <= bound:
            pipe.hincrby(keys.METRICS_DURATION, f"le={bound}", 1)
    pipe.hincrby(keys.METRICS_DURATION, "count", 1)
    pipe.hincrbyfloat(keys.METRICS_DURATION, "sum", seconds)
    pipe.execute()


def record_gc(client: redis.Redis, deleted: Mapping[str, int], bytes_freed: int, holds: Mapping[str, int]) -> None:
    """One garbage collection: ``deleted`` counts by kind (layer, flat), ``holds`` the bytes the
    repository holds afterwards by kind (layers, flats)."""
    pipe = client.pipeline()
    for kind, count in deleted.items():
        pipe.hincrby(keys.METRICS_GC, f"deleted|{kind}", count)
    pipe.hincrby(keys.METRICS_GC, "bytes_freed", bytes_freed)
    for kind, size in holds.items():
        pipe.hset(keys.METRICS_REPOSITORY, kind, size)
    pipe.execute()


class RedisCollector(Collector):
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("ducc_webhook_requests", "Webhook and API requests by source and outcome",
                                       labels=["source", "outcome"])
        for field, value in sorted(self.redis.hgetall(keys.METRICS_REQUESTS).items()):
            source, _, outcome = str(field).partition("|")
            requests.add_metric([source, outcome], float(value))
        yield requests
        waiting = self.redis.llen(keys.CELERY_QUEUE) + self.redis.llen(keys.INCOMING)
        yield GaugeMetricFamily("ducc_queue_depth", "Jobs waiting for a worker", value=float(waiting))
        yield GaugeMetricFamily("ducc_jobs_in_flight", "Tasks taken by a worker and not yet acknowledged",
                                value=float(self.redis.hlen(keys.KOMBU_UNACKED)))
        conversions = CounterMetricFamily("ducc_conversions", "Finished conversions by result", labels=["result"])
        for result, value in sorted(self.redis.hgetall(keys.METRICS_CONVERSIONS).items()):
            conversions.add_metric([str(result)], float(value))
        yield conversions
        raw = {str(k): float(v) for k, v in self.redis.hgetall(keys.METRICS_DURATION).items()}
        buckets = [(str(bound), raw.get(f"le={bound}", 0.0)) for bound in BUCKETS]
        buckets.append(("+Inf", raw.get("count", 0.0)))
        yield HistogramMetricFamily("ducc_conversion_duration_seconds", "Wall time of conversions",
                                    buckets=buckets, sum_value=raw.get("sum", 0.0))
        gc = {str(k): float(v) for k, v in self.redis.hgetall(keys.METRICS_GC).items()}
        deleted = CounterMetricFamily("ducc_gc_deleted", "Layers and flat roots deleted by garbage collection",
                                      labels=["kind"])
        for kind in ("flat", "layer"):
            deleted.add_metric([kind], gc.get(f"deleted|{kind}", 0.0))
        yield deleted
        yield CounterMetricFamily("ducc_gc_bytes_freed", "Bytes of the files under what garbage collection deleted",
                                  value=gc.get("bytes_freed", 0.0))
        holds = GaugeMetricFamily("ducc_repository_bytes", "Bytes of the files under the repository's layers and "
                                  "flat roots, as the last garbage collection measured them", labels=["kind"])
        for name, value in sorted(self.redis.hgetall(keys.METRICS_REPOSITORY).items()):
            holds.add_metric([str(name)], float(value))
        yield holds
