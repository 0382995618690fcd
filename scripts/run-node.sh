#!/usr/bin/env bash
# `make run`: a single-node cluster in ./.wardgate with the example resources applied.
set -euo pipefail
HOME_DIR=${HOME_DIR:-.wardgate}
DOMAIN=${DOMAIN:-wardgate.localhost}
BIN=${BIN:-.venv/bin}

if [ ! -f "$HOME_DIR/cluster.toml" ]; then
  "$BIN/wardgate-cluster" init --home "$HOME_DIR" --domain "$DOMAIN" --public-listen "${PUBLIC_LISTEN:-0.0.0.0:8443}"
fi
export WARDGATE_CONFIG="$PWD/$HOME_DIR/wardgatectl.toml"

"$BIN/wardgate-cluster" run --home "$HOME_DIR" &
cluster=$!
trap 'kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null' EXIT INT TERM

url=$(sed -n 's/^url = "\(.*\)"/\1/p' "$WARDGATE_CONFIG")
for _ in $(seq 1 100); do
  if "$BIN/python" - "$url" "$HOME_DIR/ca.crt" <<'PY' 2>/dev/null; then break; fi
import ssl, sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/healthz", context=ssl.create_default_context(cafile=sys.argv[2]), timeout=1)
PY
  kill -0 $cluster 2>/dev/null || { echo "wardgate-cluster exited"; exit 1; }
  sleep 0.1
done

"$BIN/wardgatectl" apply -f configs/resources
echo
echo "Wardgate is running (admin API $url). In another shell:"
echo "  export WARDGATE_CONFIG=$WARDGATE_CONFIG"
echo "  $BIN/wardgatectl get services"
echo "Public listener: https://<service>.$DOMAIN:8443 (e.g. curl --resolve gemini.$DOMAIN:8443:127.0.0.1 \\"
echo "  --cacert $HOME_DIR/ca.crt https://gemini.$DOMAIN:8443/v1/models -H 'Authorization: Bearer ...')"
wait $cluster
