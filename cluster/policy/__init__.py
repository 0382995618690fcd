"""Policy: CEL and Rego conditions, compiled once, and the rule engine that turns them into decisions."""
