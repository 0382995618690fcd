"""The identity-aware L7 proxy: per-Service pipelines built from the cache, and the public listener."""
