#!/usr/bin/env bash
# The database machine: Debian's PostgreSQL 15 on DB_IP:DB_PORT, a `wardgate` role (a password of its own) and
# database, the store URL for the cluster machines in $LAB_SHARE/store.url (0600).
#
# In a VM: the postgresql-15 package and its systemd unit (cluster "15/main"). In the namespace lab (no
# systemd, WARDGATE_NO_SYSTEMD=1): the same server binaries, a data directory below $WARDGATE_HOME, and
# `postgres` started in the background as the postgres user, as start_service starts Wardgate's units.
MACHINE=db
. "${WARDGATE_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}/vagrant/provision/common.sh"
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
mkdir -p "$LAB_SHARE"

if [ "$WARDGATE_NO_SYSTEMD" = 1 ]; then
  [ -x "$PG_BIN/postgres" ] || die "no $PG_BIN/postgres: install Debian's postgresql-15 (make test does)"
  data=$WARDGATE_HOME/postgresql
  pidfile=$WARDGATE_ETC/postgresql.pid
  mkdir -p "$WARDGATE_HOME" "$WARDGATE_ETC" "$WARDGATE_LOG_DIR"
  chmod 0711 "$WARDGATE_HOME"  # the postgres user must get through to its data directory
  if [ ! -f "$data/PG_VERSION" ]; then
    install -d -m 0700 -o postgres -g postgres "$data"
    say "initdb $data"
    # local superuser access over loopback only; the lab's network gets password authentication
    runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -U postgres -E UTF8 --auth-local=trust --auth-host=trust \
      > /dev/null
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data/pg_hba.conf"
  fi
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill -TERM "$(cat "$pidfile")"
    for _ in $(seq 1 100); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
  fi
  touch "$WARDGATE_LOG_DIR/postgresql.log"
  chown postgres "$WARDGATE_LOG_DIR/postgresql.log"
  (
    cd /
    exec setsid runuser -u postgres -- "$PG_BIN/postgres" -D "$data" -h "127.0.0.1,$DB_IP" -p "$DB_PORT" -k ""
  ) >> "$WARDGATE_LOG_DIR/postgresql.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  say "started postgresql (pid $!, log $WARDGATE_LOG_DIR/postgresql.log)"
  psql=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$DB_PORT" -U postgres)
else
  if ! dpkg-query -W -f='${Status}' postgresql-15 2>/dev/null | grep -q "install ok installed"; then
    say "installing postgresql-15"
    install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 postgresql-15)
    # from apt's cache when it has it (`make lab-systemd`'s image, no network inside); else after an update
    "${install[@]}" > /dev/null 2>&1 || { apt-get update -qq && "${install[@]}"; }
  fi
  conf=/etc/postgresql/15/main
  # the lab's private network, with password authentication (the package's defaults: localhost, peer)
  sed -i "s/^#\?listen_addresses *=.*/listen_addresses = '127.0.0.1,$DB_IP'/; s/^#\?port *=.*/port = $DB_PORT/" \
    "$conf/postgresql.conf"
  grep -q '# wardgate-lab$' "$conf/pg_hba.conf" ||
    echo "host wardgate wardgate 0.0.0.0/0 scram-sha-256 # wardgate-lab" >> "$conf/pg_hba.conf"
  systemctl enable -q postgresql
  systemctl restart postgresql
  say "started postgresql (journalctl -u postgresql@15-main)"
  psql=(runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$DB_PORT")
fi
wait_for "PostgreSQL on $DB_IP:$DB_PORT" 60 "$PG_BIN/pg_isready" -q -h "$DB_IP" -p "$DB_PORT"

# The role's password is made once and kept in the store URL; the share hands that URL to the cluster machines.
url_file=$LAB_SHARE/store.url
if [ ! -s "$url_file" ]; then
  password=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  (umask 077; echo "postgresql://wardgate:$password@$DB_IP:$DB_PORT/wardgate" > "$url_file")
fi
password=$(sed -n 's|^postgresql://wardgate:\([^@]*\)@.*|\1|p' "$url_file")
if [ "$("${psql[@]}" -A -t -c "SELECT 1 FROM pg_roles WHERE rolname = 'wardgate'")" = 1 ]; then
  "${psql[@]}" -c "ALTER ROLE wardgate LOGIN PASSWORD '$password'"
else
  "${psql[@]}" -c "CREATE ROLE wardgate LOGIN PASSWORD '$password'"
fi
if [ "$("${psql[@]}" -A -t -c "SELECT 1 FROM pg_database WHERE datname = 'wardgate'")" != 1 ]; then
  "${psql[@]}" -c "CREATE DATABASE wardgate OWNER wardgate"
fi
say "ready: postgresql://wardgate@$DB_IP:$DB_PORT/wardgate (password in $url_file)"
