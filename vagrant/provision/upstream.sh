#!/usr/bin/env bash
# The upstream machine: an OpenAI-compatible LLM provider (the fake one from the tests: there is no internet
# in the lab) on UPSTREAM_IP:UPSTREAM_PORT, demanding the provider key that only the gateway holds.
MACHINE=upstream
. "${WARDGATE_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}/vagrant/provision/common.sh"

install_wardgate

say "waiting for the provider key from the cluster machine ($LAB_SHARE/provider.key)"
wait_for "the provider key" 1800 test -s "$LAB_SHARE/provider.key"
install -m 0600 "$LAB_SHARE/provider.key" "$WARDGATE_ETC/provider.key"

PYTHONPATH=$WARDGATE_REPO
write_unit_env UPSTREAM_IP UPSTREAM_PORT PYTHONPATH
start_service wardgate-upstream
wait_for "the provider listening on $UPSTREAM_IP:$UPSTREAM_PORT" 60 \
  "$BIN/python" -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()' \
  "$UPSTREAM_IP" "$UPSTREAM_PORT"
say "ready: http://$UPSTREAM_IP:$UPSTREAM_PORT/v1 (OpenAI-compatible; needs the provider key)"
