"""Test doubles for the systems Wardgate talks to (LLM providers, ...)."""
