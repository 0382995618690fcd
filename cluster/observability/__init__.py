"""What the cluster tells operators: access logs (and later traces and metrics)."""
