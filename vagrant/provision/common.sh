# Sourced by db.sh, cluster.sh, client.sh and upstream.sh: settings, the install step, and start_service.
#
# Defaults are a Vagrant VM's. vagrant/lab.py runs the same scripts inside network namespaces on one host
# and overrides the paths (every "machine" there shares one filesystem) and sets WARDGATE_NO_SYSTEMD=1:
# start_service then runs the unit's own ExecStart line in the background instead of asking systemd.
set -euo pipefail

WARDGATE_REPO=${WARDGATE_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# shellcheck source=../lab.env
. "$WARDGATE_REPO/vagrant/lab.env"
# How Wardgate gets onto the machine:
#   source   `make install` from the repository into /opt/wardgate/venv (the default; `vagrant up`, `make lab`)
#   package  what a user installs (`make lab-systemd`): the node's .deb from $WARDGATE_REPO/dist on the cluster,
#            the client wheel with pipx on the client (`make dist` builds both); the upstream's fake provider
#            and workload.py, which are the lab's and not Wardgate, come from the repository into $LAB_TOOLS_VENV
WARDGATE_INSTALL=${WARDGATE_INSTALL:-source}
LAB_TOOLS_VENV=${LAB_TOOLS_VENV:-/opt/wardgate-lab/venv}
PIPX_HOME=${PIPX_HOME:-/opt/pipx}
case "$WARDGATE_INSTALL:${MACHINE:-}" in
  source:*) WARDGATE_VENV=${WARDGATE_VENV:-/opt/wardgate/venv} ;;
  package:cluster) WARDGATE_VENV=${WARDGATE_VENV:-/opt/wardgate/venv} ;;  # the .deb's postinst makes it
  package:client) WARDGATE_VENV=${WARDGATE_VENV:-$PIPX_HOME/venvs/wardgate} ;;  # pipx's, for the wheel
  package:*) WARDGATE_VENV=${WARDGATE_VENV:-$LAB_TOOLS_VENV} ;;
  *) echo "WARDGATE_INSTALL=$WARDGATE_INSTALL: use source or package" >&2; exit 2 ;;
esac
WARDGATE_HOME=${WARDGATE_HOME:-/var/lib/wardgate}
WARDGATE_ETC=${WARDGATE_ETC:-/etc/wardgate}
WARDGATE_LOG_DIR=${WARDGATE_LOG_DIR:-/var/log/wardgate}
WARDGATE_NO_SYSTEMD=${WARDGATE_NO_SYSTEMD:-0}
if [ "$WARDGATE_INSTALL" = package ] && [ "$WARDGATE_NO_SYSTEMD" = 1 ]; then
  echo "WARDGATE_INSTALL=package needs systemd (the package's units): not with WARDGATE_NO_SYSTEMD=1" >&2
  exit 2
fi
# What the cluster VM hands to the others (CA certificate, the lab's credentials, the provider key): a folder
# every machine sees. In Vagrant that is the NFS-synced repository; in the namespace lab a directory of its own.
LAB_SHARE=${LAB_SHARE:-$WARDGATE_REPO/vagrant/.share}
BIN=$WARDGATE_VENV/bin
UNITS=$WARDGATE_REPO/vagrant/systemd

say() { echo "[$MACHINE] $*"; }
die() { say "error: $*" >&2; exit 1; }

# The source install: `make install` into $WARDGATE_VENV, after the Debian packages it needs to run at all
# (make install adds its own). With WARDGATE_INSTALL=package this installs only the lab's tools.
install_wardgate() {
  local missing="" p
  for p in make python3-venv; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    say "installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  fi
  say "make install (venv $WARDGATE_VENV)"
  make -s -C "$WARDGATE_REPO" install VENV="$WARDGATE_VENV"
  mkdir -p "$WARDGATE_ETC" "$LAB_SHARE"
  if [ "$WARDGATE_NO_SYSTEMD" != 1 ] && [ "$WARDGATE_INSTALL" = source ]; then
    # A machine of its own: the commands on everyone's PATH. (In the namespace lab the host is shared: hands off.)
    local command
    for command in wardgate wardgatectl wardgate-cluster wardgate-agent; do
      ln -sf "$BIN/$command" "/usr/local/bin/$command"
    done
  fi
}

# the_package PATTERN: the one file in $WARDGATE_REPO/dist matching PATTERN (`make dist` leaves one of each).
the_package() {
  local found=("$WARDGATE_REPO"/dist/$1)
  [ ${#found[@]} = 1 ] && [ -f "${found[0]}" ] || die "want one $WARDGATE_REPO/dist/$1, found ${found[*]}: run \`make dist\`"
  echo "${found[0]}"
}

# The node from its Debian package (/opt/wardgate/venv, units, the wardgate user); again on every provisioning,
# which is the upgrade path: the units that ran are stopped and started again, /var/lib/wardgate stays.
install_node_package() {
  local deb
  deb=$(the_package 'wardgate-node_*.deb')
  say "apt-get install ${deb#"$WARDGATE_REPO"/}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 --reinstall "$deb"
  mkdir -p "$LAB_SHARE"
}

# The client from its wheel with pipx, for every user of the machine (`wardgate` in /usr/local/bin), as root
# because `wardgate connect` makes a WireGuard interface.
install_client_package() {
  local wheel
  wheel=$(the_package 'wardgate-*-py3-none-any.whl')
  if ! command -v pipx > /dev/null; then
    say "installing pipx"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 pipx > /dev/null
  fi
  say "pipx install ${wheel#"$WARDGATE_REPO"/}"
  PIPX_HOME=$PIPX_HOME PIPX_BIN_DIR=/usr/local/bin pipx install --force "$wheel"
  mkdir -p "$WARDGATE_ETC" "$LAB_SHARE"
}

# The settings every unit reads (EnvironmentFile=/etc/wardgate/lab.env), from this script's variables.
write_unit_env() {
  local file=$WARDGATE_ETC/lab.env
  {
    echo "# written by vagrant/provision/${0##*/}; read by the wardgate-*.service units"
    local name
    for name in WARDGATE_REPO WARDGATE_VENV WARDGATE_HOME WARDGATE_ETC WARDGATE_DOMAIN "$@"; do
      echo "$name=${!name}"
    done
  } > "$file.tmp"
  chmod 0644 "$file.tmp"
  mv "$file.tmp" "$file"
}

# start_service NAME: (re)start vagrant/systemd/NAME.service, by systemd or, with WARDGATE_NO_SYSTEMD=1, by
# running the unit's ExecStart line directly (the same command, the same environment file).
start_service() {
  local name=$1 unit=$UNITS/$1.service
  [ -f "$unit" ] || die "no unit file $unit"
  if [ "$WARDGATE_NO_SYSTEMD" = 1 ]; then
    local command pidfile=$WARDGATE_ETC/$name.pid
    command=$(sed -n 's/^ExecStart=//p' "$unit")
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      kill -TERM "$(cat "$pidfile")"
      for _ in $(seq 1 100); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
    fi
    mkdir -p "$WARDGATE_LOG_DIR"
    (
      set -a
      . "$WARDGATE_ETC/lab.env"
      set +a
      cd /
      eval "exec setsid $command"
    ) >> "$WARDGATE_LOG_DIR/$name.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    say "started $name (pid $!, log $WARDGATE_LOG_DIR/$name.log)"
  else
    if [ "$WARDGATE_INSTALL" = package ] && [ -f "/lib/systemd/system/$name.service" ]; then
      unit=/lib/systemd/system/$name.service  # the package's own unit (the lab's copy would shadow it)
      rm -f "/etc/systemd/system/$name.service"
    else
      install -m 0644 "$unit" "/etc/systemd/system/$name.service"
    fi
    systemctl daemon-reload
    systemctl enable -q "$name"
    systemctl restart "$name"
    say "started $name from $unit (journalctl -u $name)"
  fi
}

# wait_for WHAT SECONDS COMMAND...: retry COMMAND every 0.2 s.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" > /dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what: not within $seconds s"
    sleep 0.2
  done
}

# hosts_entry LINE...: names this machine must resolve without DNS, replacing the lab's earlier lines; written
# into /etc/hosts in place (inside `ip netns exec` that file is the namespace's own bind-mounted copy, so a
# rename would miss it).
hosts_entry() {
  local current line
  current=$(grep -v '# wardgate-lab$' /etc/hosts || true)
  {
    printf '%s\n' "$current"
    for line in "$@"; do printf '%s # wardgate-lab\n' "$line"; done
  } > /etc/hosts
}
