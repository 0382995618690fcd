"""Wardgate clients: `wardgatectl` (administration) and `wardgate` (a user's client)."""
