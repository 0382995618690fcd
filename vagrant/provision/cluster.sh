#!/usr/bin/env bash
# The cluster machine: wardgate-cluster (admin API, public HTTPS gateway, tunnel listener) and wardgate-agent
# (its WireGuard interface and DNS), the example resources and the lab's, the lab's credentials.
MACHINE=cluster
. "${WARDGATE_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}/vagrant/provision/common.sh"
WG_INTERFACE=${WG_INTERFACE:-wardgate0}
export WARDGATE_CONFIG=$WARDGATE_HOME/wardgatectl.toml

if [ "$WARDGATE_INSTALL" = package ]; then
  install_node_package
  as_node=(runuser -u wardgate --)  # the package's units run as the wardgate user: so does its home's maker
else
  install_wardgate
  as_node=()
fi

if [ ! -f "$WARDGATE_HOME/cluster.toml" ]; then
  say "wardgate-cluster init (domain $WARDGATE_DOMAIN)"
  "${as_node[@]}" "$BIN/wardgate-cluster" init --home "$WARDGATE_HOME" --domain "$WARDGATE_DOMAIN" \
    --admin-listen 127.0.0.1:9443 --public-listen 0.0.0.0:443
  printf '\n[tunnel]\ninterface = "%s"\n' "$WG_INTERFACE" >> "$WARDGATE_HOME/cluster.toml"
fi
install -m 0644 "$WARDGATE_HOME/ca.crt" "$LAB_SHARE/ca.crt"

# The lab's provider key: the upstream machine's fake provider demands it; only the gateway holds it.
if [ ! -s "$LAB_SHARE/provider.key" ]; then
  (umask 077; "$BIN/python" -c 'import secrets; print("sk-lab-" + secrets.token_urlsafe(24), end="")' > "$LAB_SHARE/provider.key")
fi

write_unit_env
if [ "$WARDGATE_INSTALL" = package ]; then
  # The package's unit grants no capability; the lab listens on 443 (public) and 80 (tunnel), below 1024.
  # This is the drop-in README.Debian gives for that.
  mkdir -p /etc/systemd/system/wardgate-cluster.service.d
  printf '%s\n' "# written by vagrant/provision/cluster.sh: the lab's listeners are on ports 443 and 80" \
    "[Service]" "AmbientCapabilities=CAP_NET_BIND_SERVICE" "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" \
    > /etc/systemd/system/wardgate-cluster.service.d/privileged-ports.conf
fi
if [ "$WARDGATE_NO_SYSTEMD" != 1 ]; then
  echo "export WARDGATE_CONFIG=$WARDGATE_CONFIG" > /etc/profile.d/wardgate.sh  # `sudo -i wardgatectl get services`
fi
start_service wardgate-cluster
wait_for "the admin API" 60 "$BIN/wardgatectl" get nodes

"$BIN/wardgatectl" create secret lab-provider-key --from-file "$LAB_SHARE/provider.key" > /dev/null
say "wardgatectl apply -f configs/resources -f configs/lab"
"$BIN/wardgatectl" apply -f "$WARDGATE_REPO/configs/resources" -f "$WARDGATE_REPO/configs/lab"

# credential NAME USER TYPE FILE FIELD...: create it once; keep the fields it shows once in FILE (0600).
credential() {
  local name=$1 user=$2 type=$3 file=$4
  shift 4
  [ -s "$file" ] && "$BIN/wardgatectl" get credential "$name" > /dev/null 2>&1 && return 0
  "$BIN/wardgatectl" delete credential "$name" > /dev/null 2>&1 || true
  local out field
  out=$("$BIN/wardgatectl" create credential "$name" --user "$user" --type "$type")
  (
    umask 077
    for field in "$@"; do
      echo "$out" | sed -n "s/^ *$field: *//p"
    done > "$file"
  )
  say "credential $name ($type for $user) -> $file"
}
credential alice-lab alice auth-token "$LAB_SHARE/alice.token" token
credential ci-bot-lab ci-bot oauth2 "$LAB_SHARE/ci-bot.oauth2" client_id client_secret
credential node-agent-lab node-agent access-token "$WARDGATE_ETC/agent.token" token
agent_state=$WARDGATE_ETC/agent-state
if [ "$WARDGATE_INSTALL" = package ]; then
  # the package's agent runs as the wardgate user and may write below /var/lib/wardgate only
  chgrp wardgate "$WARDGATE_ETC/agent.token"
  chmod 0640 "$WARDGATE_ETC/agent.token"
  agent_state=$WARDGATE_HOME/agent
fi

cat > "$WARDGATE_ETC/agent.toml" <<TOML
# written by vagrant/provision/cluster.sh
node = "lab-node"
interface = "$WG_INTERFACE"
listen_port = 51820
endpoint = "$CLUSTER_IP:51820"
state_dir = "$agent_state"
resync_interval = 2.0

[cluster]
url = "https://127.0.0.1:9443"
ca_file = "$WARDGATE_HOME/ca.crt"
token_file = "$WARDGATE_ETC/agent.token"
TOML
start_service wardgate-agent
wait_for "the agent registering node lab-node" 60 \
  bash -c '"$0" get nodes | grep -q "^lab-node"' "$BIN/wardgatectl"

say "ready: https://<service>.$WARDGATE_DOMAIN on $CLUSTER_IP:443, WireGuard on $CLUSTER_IP:51820 ($WG_INTERFACE)"
