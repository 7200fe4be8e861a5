"""What the proxy tells about its traffic: the per-request record, the access log, the
Prometheus metrics, the windowed statistics and client inventory behind the migration
report, and the sampled payload recording. Nothing here decides where a request goes."""
