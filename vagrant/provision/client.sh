#!/usr/bin/env bash
# The client machine: `wardgate login` with alice's auth token, `wardgate connect` as a service, the public
# names in /etc/hosts for client-less access, and the ci-bot workload's OAuth2 client credentials.
MACHINE=client
. "${WARDGATE_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}/vagrant/provision/common.sh"
WG_INTERFACE=${WG_INTERFACE:-wardgate}
# Where `wardgate` keeps the login and the connection (root's own in a VM: `sudo -i wardgate status`).
XDG_CONFIG_HOME=${XDG_CONFIG_HOME:-/root/.config}
export XDG_CONFIG_HOME

if [ "$WARDGATE_INSTALL" = package ]; then
  install_client_package
  WARDGATE_VENV=$LAB_TOOLS_VENV install_wardgate  # workload.py's SDKs (openai, httpx): the lab's, not the client's
else
  install_wardgate
fi

# Client-less access needs the cluster's public names; there is no DNS server for them in the lab. Each name
# has both nodes' addresses, as DNS round robin gives (docs/deployment.md): glibc returns both (`multi on`),
# and a client that tries each address in turn (Python's socket.create_connection, curl) reaches the node
# that is up.
names="$WARDGATE_DOMAIN"
for service in chat safe-chat gemini my-api safe-gemini total-ai; do names="$names $service.$WARDGATE_DOMAIN"; done
hosts_entry "$CLUSTER_IP $names" "$CLUSTER2_IP $names"

say "waiting for the cluster machine's CA and credentials in $LAB_SHARE"
wait_for "the cluster's credentials" 1800 test -s "$LAB_SHARE/alice.token" -a -s "$LAB_SHARE/ci-bot.oauth2"
install -m 0644 "$LAB_SHARE/ca.crt" "$WARDGATE_ETC/ca.crt"
install -m 0600 "$LAB_SHARE/ci-bot.oauth2" "$WARDGATE_ETC/ci-bot.oauth2"

say "wardgate login --domain $WARDGATE_DOMAIN (alice)"
WARDGATE_AUTH_TOKEN=$(cat "$LAB_SHARE/alice.token") \
  "$BIN/wardgate" login --domain "$WARDGATE_DOMAIN" --ca "$WARDGATE_ETC/ca.crt"

write_unit_env XDG_CONFIG_HOME WG_INTERFACE
start_service wardgate-connect
wait_for "the tunnel up (wardgate status)" 60 "$BIN/wardgate" status
"$BIN/wardgate" status
say "ready: private Services at http://<service>.local.$WARDGATE_DOMAIN; public ones at https://<service>.$WARDGATE_DOMAIN"
