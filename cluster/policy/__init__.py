"""Policy: CEL conditions, rule evaluation and decisions."""
