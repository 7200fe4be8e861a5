"""Locust load tests for serving-proxy: payload mixes, a fixed-arrival-rate mode, thresholds.

Only `locustfile.py` imports locust, and it only ever runs in a locust child process.
"""
