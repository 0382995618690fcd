"""Wardgate node agent: keeps the node's WireGuard interface equal to the live client sessions."""
