"""What the cluster tells operators: the typed access record, the access log, OTLP traces and logs, Prometheus
metrics."""
