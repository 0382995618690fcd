#!/usr/bin/env bash
# `make run`: a single-node cluster in ./.wardgate with the example resources applied, a local model
# (SmolLM2-135M, offline: scripts/local_model.py) behind the Service `local-llm`, a first request that works
# as is (<home>/first-request.sh), and the node agent where the machine allows it (root and wireguard-go).
#
# Environment (tests set them to run beside anything else): HOME_DIR, DOMAIN, BIN; PUBLIC_LISTEN and
# ADMIN_LISTEN (used by `init`, on the first run of a home only); LOCAL_MODEL_LISTEN (127.0.0.1:8081);
# AGENT=auto|off, TUNNEL_INTERFACE (wardgate0) and WG_PORT (51820) for the node agent.
set -euo pipefail
HOME_DIR=${HOME_DIR:-.wardgate}
DOMAIN=${DOMAIN:-wardgate.localhost}
BIN=${BIN:-.venv/bin}
LOCAL_MODEL_LISTEN=${LOCAL_MODEL_LISTEN:-127.0.0.1:8081}
AGENT=${AGENT:-auto}
TUNNEL_INTERFACE=${TUNNEL_INTERFACE:-wardgate0}
WG_PORT=${WG_PORT:-51820}
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
CONFIGS=$SCRIPTS/../configs

if [ ! -f "$HOME_DIR/cluster.toml" ]; then
  "$BIN/wardgate-cluster" init --home "$HOME_DIR" --domain "$DOMAIN" \
    --public-listen "${PUBLIC_LISTEN:-0.0.0.0:8443}" ${ADMIN_LISTEN:+--admin-listen "$ADMIN_LISTEN"}
  if [ "$TUNNEL_INTERFACE" != wardgate0 ]; then
    printf '\n[tunnel]\ninterface = "%s"\n' "$TUNNEL_INTERFACE" >> "$HOME_DIR/cluster.toml"
  fi
fi
export WARDGATE_CONFIG="$(cd "$HOME_DIR" && pwd)/wardgatectl.toml"
ctl() { "$BIN/wardgatectl" "$@"; }

# Every process started here is stopped on the way out, whichever way that is.
children=()
stop_children() {
  trap - EXIT INT TERM
  for pid in "${children[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${children[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_children EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The local model's key: the gateway holds it (Secret local-llm-key), callers never see it.
if [ ! -s "$HOME_DIR/local-model.key" ]; then
  (umask 077 && "$BIN/python" -c 'import secrets; print("sk-local-" + secrets.token_urlsafe(24), end="")' \
    > "$HOME_DIR/local-model.key")
fi
"$BIN/python" "$SCRIPTS/local_model.py" --listen "$LOCAL_MODEL_LISTEN" --api-key-file "$HOME_DIR/local-model.key" \
  > "$HOME_DIR/local-model.log" 2>&1 &
model=$!
children+=("$model")

"$BIN/wardgate-cluster" run --home "$HOME_DIR" &
cluster=$!
children+=("$cluster")

url=$(sed -n 's/^url = "\(.*\)"/\1/p' "$WARDGATE_CONFIG")
for _ in $(seq 1 300); do
  if "$BIN/python" - "$url" "$HOME_DIR/ca.crt" <<'PY' 2>/dev/null; then break; fi
import ssl, sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/healthz", context=ssl.create_default_context(cafile=sys.argv[2]), timeout=1)
PY
  kill -0 $cluster 2>/dev/null || { echo "wardgate-cluster exited"; exit 1; }
  sleep 0.1
done

ctl apply -f "$CONFIGS/resources"
ctl create secret local-llm-key --from-file "$HOME_DIR/local-model.key"
sed "s|url: http://127.0.0.1:8081|url: http://$LOCAL_MODEL_LISTEN|" "$CONFIGS/local/local-llm.yaml" \
  > "$HOME_DIR/local-llm.yaml"
ctl apply -f "$HOME_DIR/local-llm.yaml"

# credential NAME USER TYPE FILE FIELD: made once, its shown-once FIELD kept in FILE (0600, no newline).
credential() {
  local name=$1 user=$2 type=$3 file=$4 field=$5 out
  [ -s "$file" ] && ctl get credential "$name" > /dev/null 2>&1 && return 0
  ctl delete credential "$name" > /dev/null 2>&1 || true
  out=$(ctl create credential "$name" --user "$user" --type "$type")
  (umask 077 && printf '%s' "$(echo "$out" | sed -n "s/^ *$field: *//p")" > "$file")
  echo "credential/$name created (user $user, $type): its $field is in $file"
}
credential demo-app-oauth demo-app oauth2 "$HOME_DIR/demo-app-oauth.secret" client_secret

# The first request, as a newcomer types it. Names under .localhost need no DNS with --connect-to.
public=$(sed -n '/^\[public\]/,/^\[/s/^listen = "\(.*\)"/\1/p' "$HOME_DIR/cluster.toml")
port=${public##*:}
address=${public%:*}
case $address in 0.0.0.0 | "" | "[::]") address=127.0.0.1 ;; esac
cat > "$HOME_DIR/first-request.sh" <<SH
#!/bin/sh
# Written by \`make run\`: a token for the workload demo-app from the OAuth2 endpoint (client credentials),
# then a streamed answer from the local model through the gateway, which injects the model's key.
set -eu
token=\$(curl -sS --fail-with-body --cacert $HOME_DIR/ca.crt --connect-to ::$address:$port \\
  https://$DOMAIN:$port/oauth2/token -d grant_type=client_credentials -d client_id=demo-app-oauth \\
  --data-urlencode client_secret@$HOME_DIR/demo-app-oauth.secret | sed -n 's/.*"access_token": *"\([^"]*\)".*/\1/p')
curl -sS -N --fail-with-body --cacert $HOME_DIR/ca.crt --connect-to ::$address:$port \\
  https://local-llm.$DOMAIN:$port/v1/chat/completions -H "Authorization: Bearer \$token" \\
  -H 'Content-Type: application/json' -d '{"model": "smollm2-135m", "stream": true, "max_tokens": 60,
    "stream_options": {"include_usage": true},
    "messages": [{"role": "user", "content": "Say hello to a new Wardgate user in one sentence."}]}'
SH
chmod 0755 "$HOME_DIR/first-request.sh"
cat > "$HOME_DIR/first-request.py" <<PY
"""Written by \`make run\`: the first request with the OpenAI Python SDK (run it with .venv/bin/python).

Names under .localhost are not in DNS here, so the client dials the listener and names the host in Host."""
import ssl
from pathlib import Path

import httpx
import openai

ca = ssl.create_default_context(cafile="$HOME_DIR/ca.crt")
secret = Path("$HOME_DIR/demo-app-oauth.secret").read_text()
token = httpx.post(
    "https://$address:$port/oauth2/token",
    headers={"Host": "$DOMAIN"},
    data={"grant_type": "client_credentials", "client_id": "demo-app-oauth", "client_secret": secret},
    verify=ca,
).raise_for_status().json()["access_token"]
client = openai.OpenAI(
    base_url="https://$address:$port/v1",
    api_key=token,
    default_headers={"Host": "local-llm.$DOMAIN"},
    http_client=openai.DefaultHttpxClient(verify=ca),
)
stream = client.chat.completions.create(
    model="smollm2-135m",
    messages=[{"role": "user", "content": "Say hello to a new Wardgate user in one sentence."}],
    max_tokens=60,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
PY

# The model loads while the cluster starts; it must answer before the first request is offered.
for _ in $(seq 1 600); do
  grep -q "serving on" "$HOME_DIR/local-model.log" && break
  kill -0 $model 2>/dev/null || { echo "the local model exited:"; tail -5 "$HOME_DIR/local-model.log"; exit 1; }
  sleep 0.1
done

agent_note=""
if [ "$AGENT" = off ]; then
  agent_note="not started (AGENT=off)"
elif [ "$(id -u)" != 0 ]; then
  agent_note="not started: it needs root (it creates the WireGuard interface $TUNNEL_INTERFACE)"
elif ! command -v wireguard-go > /dev/null && [ ! -d /sys/module/wireguard ]; then
  agent_note="not started: neither wireguard-go nor the kernel's WireGuard module is here"
else
  ctl apply -f "$CONFIGS/lab/00-node-agent.yaml" > /dev/null
  credential node-agent node-agent access-token "$HOME_DIR/agent.token" token > /dev/null
  cat > "$HOME_DIR/agent.toml" <<TOML
# Written by \`make run\` (configs/agent.example.toml explains each setting).
node = "local"
interface = "$TUNNEL_INTERFACE"
listen_port = $WG_PORT
state_dir = "agent"

[cluster]
url = "$url"
ca_file = "ca.crt"
token_file = "agent.token"
TOML
  "$BIN/wardgate-agent" --config "$HOME_DIR/agent.toml" > "$HOME_DIR/agent.log" 2>&1 &
  children+=("$!")
  agent_note="running (node local, interface $TUNNEL_INTERFACE, WireGuard UDP $WG_PORT; log $HOME_DIR/agent.log)"
fi

cat <<EOF

Wardgate is running: admin API $url, public listener https://<service>.$DOMAIN:$port.
The local model smollm2-135m (offline, on $LOCAL_MODEL_LISTEN, its log $HOME_DIR/local-model.log) is the
Service local-llm; the workload demo-app may call it with its OAuth2 credential (client id demo-app-oauth).

Your first request (in another shell, from this directory; also in $HOME_DIR/first-request.sh):

$(sed -n '/^token=/,$p' "$HOME_DIR/first-request.sh")

The same with the OpenAI Python SDK: .venv/bin/python $HOME_DIR/first-request.py
Each request writes one line to $HOME_DIR/access.log. The node agent: $agent_note.
Administer it: export WARDGATE_CONFIG=$WARDGATE_CONFIG; $BIN/wardgatectl get services
The other example Services (gemini, my-api, safe-gemini, total-ai) need provider keys: see README.md.
EOF
wait $cluster
