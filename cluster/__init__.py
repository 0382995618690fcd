"""Wardgate cluster node: control plane, identity, policy and the identity-aware L7 proxy."""
