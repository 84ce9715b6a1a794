"""Benchmarks: leveret side by side with raw pika, raw aio-pika, Dramatiq, Celery and FastStream.

Run ``make bench`` (or ``bench/.venv/bin/python bench/run.py --help``); see docs/performance.md.
"""
