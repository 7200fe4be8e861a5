"""Scoring-server simulators, the end-to-end demo, the corpus reader and its equality rules.

A package of its own beside `proxy/`: tests, benchmarks, load tests and the demo use it;
the proxy never imports it.
"""
