"""The service: conversion requests queued in Redis and run by Celery workers.

- ``keys``      the Redis schema (every key name, pure)
- ``queue``     submitting requests: job records, coalescing, the dispatcher (light: the web app uses it)
- ``jobs``      job records and timelines, job states
- ``locks``     Redis leases that expire unless renewed
- ``running``   one running job: its leases, heartbeat and finish
- ``broker``    the Celery app and Redis connections (light)
- ``tasks``     Celery tasks (thin adapters), workers only
- ``metrics``   Prometheus metrics kept in Redis
- ``embedded``  ``ducc serve``: the whole service on one machine
"""
