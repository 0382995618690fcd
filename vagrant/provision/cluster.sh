#!/usr/bin/env bash
# A cluster machine: wardgate-cluster (admin API, public HTTPS gateway, tunnel listener) and wardgate-agent
# (its WireGuard interface and DNS), its cluster's state in PostgreSQL on the db machine.
#   CLUSTER_ROLE=init (the default; machine "cluster"): `init --store`, the example resources and the lab's,
#     the lab's credentials; hands the store key, an admin token and the agents' token to the others.
#   CLUSTER_ROLE=join (machine "cluster2"): `join` the first's cluster with that store key (docs/deployment.md).
CLUSTER_ROLE=${CLUSTER_ROLE:-init}
case "$CLUSTER_ROLE" in
  init) MACHINE=cluster ;;
  join) MACHINE=cluster2 ;;
  *) echo "CLUSTER_ROLE=$CLUSTER_ROLE: use init or join" >&2; exit 2 ;;
esac
. "${WARDGATE_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}/vagrant/provision/common.sh"
WG_INTERFACE=${WG_INTERFACE:-wardgate0}
if [ "$CLUSTER_ROLE" = init ]; then NODE=lab-node NODE_IP=$CLUSTER_IP; else NODE=lab-node2 NODE_IP=$CLUSTER2_IP; fi
export WARDGATE_CONFIG=$WARDGATE_HOME/wardgatectl.toml

if [ "$WARDGATE_INSTALL" = package ]; then
  install_node_package
  as_node=(runuser -u wardgate --)  # the package's units run as the wardgate user: so does its home's maker
else
  install_wardgate
  as_node=()
fi

say "waiting for the db machine's store URL in $LAB_SHARE"
wait_for "the store URL" 1800 test -s "$LAB_SHARE/store.url"
store=$(cat "$LAB_SHARE/store.url")
listeners=(--node-name "$NODE" --admin-listen 127.0.0.1:9443 --public-listen 0.0.0.0:443)
if [ ! -f "$WARDGATE_HOME/cluster.toml" ] && [ "$CLUSTER_ROLE" = init ]; then
  say "wardgate-cluster init --store postgresql://wardgate@$DB_IP:$DB_PORT/wardgate (domain $WARDGATE_DOMAIN)"
  "${as_node[@]}" "$BIN/wardgate-cluster" init --home "$WARDGATE_HOME" --domain "$WARDGATE_DOMAIN" \
    --store "$store" "${listeners[@]}"
  printf '\n[tunnel]\ninterface = "%s"\n' "$WG_INTERFACE" >> "$WARDGATE_HOME/cluster.toml"
elif [ ! -f "$WARDGATE_HOME/cluster.toml" ]; then
  say "waiting for the first cluster machine's store key in $LAB_SHARE"
  wait_for "the first node's store key (and agent token, handed over last)" 1800 test -s "$LAB_SHARE/agent.token"
  mkdir -p "$WARDGATE_ETC"
  # the store key never goes into the database: it comes over the share, readable by the node only
  install -m 0600 "$LAB_SHARE/store.key" "$WARDGATE_ETC/store.key"
  if [ "$WARDGATE_INSTALL" = package ]; then chown wardgate "$WARDGATE_ETC/store.key"; fi
  say "wardgate-cluster join --store postgresql://wardgate@$DB_IP:$DB_PORT/wardgate"
  "${as_node[@]}" "$BIN/wardgate-cluster" join --home "$WARDGATE_HOME" --store "$store" \
    --store-key-file "$WARDGATE_ETC/store.key" "${listeners[@]}"
  printf '\n[tunnel]\ninterface = "%s"\n' "$WG_INTERFACE" >> "$WARDGATE_HOME/cluster.toml"
  install -m 0600 "$LAB_SHARE/admin.token" "$WARDGATE_HOME/admin.token"  # wardgatectl on this node too
  if [ "$WARDGATE_INSTALL" = package ]; then chown wardgate "$WARDGATE_HOME/admin.token"; fi
fi
if [ "$CLUSTER_ROLE" = init ]; then
  install -m 0644 "$WARDGATE_HOME/ca.crt" "$LAB_SHARE/ca.crt"
  install -m 0600 "$WARDGATE_HOME/store.key" "$LAB_SHARE/store.key"
  install -m 0600 "$WARDGATE_HOME/admin.token" "$LAB_SHARE/admin.token"
fi

# The lab's provider key: the upstream machine's fake provider demands it; only the gateway holds it.
if [ "$CLUSTER_ROLE" = init ] && [ ! -s "$LAB_SHARE/provider.key" ]; then
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

if [ "$CLUSTER_ROLE" = init ]; then
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
  install -m 0600 "$WARDGATE_ETC/agent.token" "$LAB_SHARE/agent.token"  # for the other nodes' agents (last)
else
  install -m 0600 "$LAB_SHARE/agent.token" "$WARDGATE_ETC/agent.token"
fi
agent_state=$WARDGATE_ETC/agent-state
if [ "$WARDGATE_INSTALL" = package ]; then
  # the package's agent runs as the wardgate user and may write below /var/lib/wardgate only
  chgrp wardgate "$WARDGATE_ETC/agent.token"
  chmod 0640 "$WARDGATE_ETC/agent.token"
  agent_state=$WARDGATE_HOME/agent
fi

cat > "$WARDGATE_ETC/agent.toml" <<TOML
# written by vagrant/provision/cluster.sh
node = "$NODE"
interface = "$WG_INTERFACE"
listen_port = 51820
endpoint = "$NODE_IP:51820"
state_dir = "$agent_state"
resync_interval = 2.0

[cluster]
url = "https://127.0.0.1:9443"
ca_file = "$WARDGATE_HOME/ca.crt"
token_file = "$WARDGATE_ETC/agent.token"
TOML
start_service wardgate-agent
wait_for "the agent registering node $NODE" 60 \
  bash -c '"$0" get nodes | grep -q "^$1 "' "$BIN/wardgatectl" "$NODE"

say "ready: node $NODE, https://<service>.$WARDGATE_DOMAIN on $NODE_IP:443, WireGuard on $NODE_IP:51820 ($WG_INTERFACE)"
