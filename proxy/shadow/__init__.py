"""Shadowing: `runner` (bounded submission, the listeners), `mirror` (one shadow call and its
comparison), `tally` (the one verdict count), `job` (what crosses to the worker), and the
worker process: `worker` (the proxy's side), `channel` (the framing), `process` (its main)."""
