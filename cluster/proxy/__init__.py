"""The identity-aware L7 proxy: the public and tunnel listeners, the per-request exchange, header hygiene,
CORS, upstream auth and the upstream call. Decisions come from cluster.authorize."""
