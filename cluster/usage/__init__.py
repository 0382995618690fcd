"""AI usage governance: quota counters (Redis, or a file shared by a node's workers), usage extraction and
estimation, prices, the per-request meter and the usage ledger."""
