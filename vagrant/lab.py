"""The lab on one host: the Vagrantfile's five machines as network namespaces, provisioned by the same scripts.

    python -m vagrant.lab run   [--name N]   build, provision, run the scenario, tear down (exit 0: all passed)
    python -m vagrant.lab up    [--name N]   build and provision, leave it running (default name "wardgate")
    python -m vagrant.lab down  [--name N]   tear it down
    python -m vagrant.lab shell MACHINE [--name N] [-- COMMAND...]
                                             a shell (or COMMAND) on a machine, with its tools on PATH
    --systemd (run, up)                      each machine a Debian container booting systemd (containers.py)

         <name>-cluster  192.168.56.10 ─┐
         <name>-client   192.168.56.11 ─┤
         <name>-upstream 192.168.56.12 ─┼─ bridge in <name>-lan   (addresses from vagrant/lab.env)
         <name>-db       192.168.56.13 ─┤
         <name>-cluster2 192.168.56.14 ─┘

Each machine's eth1 is a veth to a bridge in a sixth namespace, as a Vagrant private network would be.
vagrant/provision/{db,cluster,upstream,client}.sh run inside their namespace with WARDGATE_NO_SYSTEMD=1 (they
start each unit's ExecStart line, and PostgreSQL, themselves) and with paths under .lab/<name>/, since every
"machine" here shares one filesystem; cluster2 runs cluster.sh with CLUSTER_ROLE=join. Everything is removed
on exit, failure or Ctrl-C: processes in the namespaces, the namespaces, /etc/netns/<ns>/ and the WireGuard
sockets of this lab's interfaces. Needs root.

With --systemd the machines are containers booted in the same namespaces, and the scripts run as Vagrant runs
them (VM paths, systemd units), installing Wardgate from the packages `make dist` leaves in dist/: the node's
.deb on the cluster, the client wheel with pipx on the client. What is left out is the VM's own kernel and NFS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vagrant import containers  # run from the repository: python -m vagrant.lab

REPO = Path(__file__).resolve().parent.parent
VAGRANT = REPO / "vagrant"
# provisioning order: each machine makes what the next ones wait for (the store, the first node's keys)
MACHINES = ("db", "cluster", "cluster2", "upstream", "client")
NODES = ("cluster", "cluster2")  # the cluster's two nodes; the client starts on the first
# machine -> (its provisioning script, the settings Vagrant gives it besides WARDGATE_REPO)
PROVISION: dict[str, tuple[str, dict[str, str]]] = {
    machine: (f"{machine}.sh", {}) for machine in MACHINES if machine not in NODES
} | {"cluster": ("cluster.sh", {"CLUSTER_ROLE": "init"}), "cluster2": ("cluster.sh", {"CLUSTER_ROLE": "join"})}
NETNS_DIR = Path("/var/run/netns")
NETNS_ETC = Path("/etc/netns")
WIREGUARD_SOCKETS = Path("/var/run/wireguard")
PROVISION_TIMEOUT = 600


def lab_env() -> dict[str, str]:
    values = {}
    for line in (VAGRANT / "lab.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


class LabError(Exception):
    pass


@dataclass(frozen=True)
class Lab:
    """Names and paths of one lab. WireGuard interface names carry `tag` (their sockets share one folder)."""

    name: str
    tag: str
    venv: Path
    systemd: bool = False

    @property
    def state(self) -> Path:
        return REPO / ".lab" / self.name

    def netns(self, machine: str) -> str:
        return f"{self.name}-{machine}"

    @property
    def namespaces(self) -> list[str]:
        return [self.netns(m) for m in (*MACHINES, "lan")]

    @property
    def interfaces(self) -> dict[str, str]:
        if self.systemd:  # each container has its own /run/wireguard: the VM's names
            return {"cluster": "wardgate0", "cluster2": "wardgate0", "client": "wardgate"}
        return {"cluster": f"wg{self.tag}n", "cluster2": f"wg{self.tag}m", "client": f"wg{self.tag}c"}

    @property
    def repo(self) -> str:
        """The repository as the machines see it."""
        return containers.GUEST_REPO if self.systemd else str(REPO)

    @property
    def python(self) -> str:
        """The interpreter of workload.py on the client (its SDKs are the lab's tools, not the client's)."""
        return f"{containers.LAB_TOOLS_VENV}/bin/python" if self.systemd else "python"

    def access_log(self, node: str = "cluster") -> Path:
        if self.systemd:
            return self.state / node / "root" / "var" / "lib" / "wardgate" / "access.log"
        return self.state / node / "home" / "access.log"

    def machine_env(self, machine: str) -> dict[str, str]:
        """What a provisioning script (and `shell`) gets instead of a VM's defaults (with --systemd: a VM's)."""
        if self.systemd:
            env = {"PATH": containers.GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
            if machine in NODES:  # what provisioning put in /etc/profile.d for login shells
                env["WARDGATE_CONFIG"] = "/var/lib/wardgate/wardgatectl.toml"
            return env
        root = self.state / machine
        env = {
            "PATH": f"{self.venv / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "WARDGATE_REPO": str(REPO),
            "WARDGATE_VENV": str(self.venv),
            "WARDGATE_HOME": str(root / "home"),
            "WARDGATE_ETC": str(root / "etc"),
            "WARDGATE_LOG_DIR": str(root / "log"),
            "WARDGATE_NO_SYSTEMD": "1",
            "LAB_SHARE": str(self.state / "share"),
        }
        if machine in self.interfaces:
            env["WG_INTERFACE"] = self.interfaces[machine]
        if machine in NODES:
            env["WARDGATE_CONFIG"] = str(root / "home" / "wardgatectl.toml")
        if machine == "client":
            env["XDG_CONFIG_HOME"] = str(root / "config")
        return env

    def command(self, machine: str, command: Sequence[str], extra: dict[str, str] | None = None) -> list[str]:
        """COMMAND inside MACHINE's namespace with only MACHINE's environment (plus EXTRA)."""
        env = {**self.machine_env(machine), **(extra or {})}
        if self.systemd:
            return [*containers.enter(self.netns(machine), env), *command]
        return ["ip", "netns", "exec", self.netns(machine), "env", "-i", *_assignments(env), *command]

    def run(
        self, machine: str, *command: str, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """COMMAND on MACHINE, with its environment; output captured."""
        result = subprocess.run(
            self.command(machine, command),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        if check and result.returncode != 0:
            raise LabError(f"{machine}: {' '.join(command)} exited {result.returncode}: {result.stderr.strip()}")
        return result


def _assignments(env: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in env.items()]


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def build(lab: Lab) -> None:
    """The namespaces, the bridge, each machine's eth1 and /etc/netns/<ns>/hosts (its own /etc/hosts)."""
    env = lab_env()
    if lab.systemd:
        containers.prepare_image()
    lab.state.mkdir(parents=True, exist_ok=True)
    recorded = {"name": lab.name, "tag": lab.tag, "venv": str(lab.venv), "systemd": lab.systemd}
    (lab.state / "lab.json").write_text(json.dumps(recorded))
    lan = lab.netns("lan")
    ip("netns", "add", lan)
    ip("-n", lan, "link", "add", "br0", "type", "bridge")
    ip("-n", lan, "link", "set", "br0", "up")
    for machine in MACHINES:
        netns = lab.netns(machine)
        ip("netns", "add", netns)
        ip("-n", netns, "link", "set", "lo", "up")
        ip("link", "add", "eth1", "netns", netns, "type", "veth", "peer", "name", machine, "netns", lan)
        ip("-n", lan, "link", "set", machine, "master", "br0", "up")
        address = f"{env[f'{machine.upper()}_IP']}/{env['LAB_PREFIX_LENGTH']}"
        ip("-n", netns, "addr", "add", address, "dev", "eth1")
        ip("-n", netns, "link", "set", "eth1", "up")
        etc = NETNS_ETC / netns
        etc.mkdir(parents=True, exist_ok=True)
        shutil.copyfile("/etc/hosts", etc / "hosts")
        print(f"lab: {netns}: eth1 {address}")
    interfaces = lab.interfaces
    print(
        f"lab: WireGuard interfaces {interfaces['cluster']} (cluster), {interfaces['cluster2']} (cluster2),"
        f" {interfaces['client']} (client)"
    )
    if lab.systemd:
        for machine in MACHINES:
            root = lab.state / machine
            root.mkdir(parents=True, exist_ok=True)
            containers.boot(
                root / "root", lab.netns(machine), f"wardgate-{machine}", lab.state / "share", root / "console.log"
            )


def provision(lab: Lab) -> None:
    for machine in MACHINES:
        name, settings = PROVISION[machine]
        script = f"{lab.repo}/vagrant/provision/{name}"
        # in a container, what Vagrant's shell provisioner does (root, WARDGATE_REPO=/vagrant), installing
        # Wardgate from its packages in dist/ as a user would
        vagrant = [f"WARDGATE_REPO={lab.repo}", "WARDGATE_INSTALL=package"] if lab.systemd else []
        assignments = ["env", *vagrant, *_assignments(settings)]
        command = lab.command(machine, ["timeout", str(PROVISION_TIMEOUT), *assignments, "bash", script])
        started = time.monotonic()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO) as p:
            assert p.stdout is not None
            for line in p.stdout:
                print(f"  {line}", end="", flush=True)
            code = p.wait()
        if code == 124:
            raise LabError(f"vagrant/provision/{name} did not finish within {PROVISION_TIMEOUT:.0f} s")
        if code != 0:
            raise LabError(f"vagrant/provision/{name} exited {code} in {lab.netns(machine)}")
        print(f"lab: {machine} provisioned in {time.monotonic() - started:.1f} s", flush=True)


def teardown(lab: Lab) -> list[str]:
    """Remove everything this lab made; returns what could not be removed (empty when all went)."""
    problems = []
    # the client first: it says goodbye to the cluster; the database after the nodes that use it
    for machine in ("client", "cluster2", "cluster", "upstream", "db", "lan"):
        netns = lab.netns(machine)
        if not (NETNS_DIR / netns).exists():
            continue
        if lab.systemd:
            containers.power_off(netns)
        _stop_processes(netns)
        result = subprocess.run(["ip", "netns", "del", netns], capture_output=True, text=True)
        if result.returncode != 0:
            problems.append(f"netns {netns}: {result.stderr.strip()}")
    for netns in lab.namespaces:
        shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)
    if not lab.systemd:  # containers keep theirs in their own /run
        for interface in lab.interfaces.values():
            (WIREGUARD_SOCKETS / f"{interface}.sock").unlink(missing_ok=True)
    shutil.rmtree(lab.state, ignore_errors=True)
    with suppress(OSError):
        lab.state.parent.rmdir()  # .lab/, when no other lab is in it
    problems += [f"netns {ns} still there" for ns in lab.namespaces if (NETNS_DIR / ns).exists()]
    return problems


def _pids(netns: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


def _stop_processes(netns: str, grace: float = 10.0) -> None:
    """SIGTERM to every process in the namespace (the units' own shutdown), SIGKILL to what is left."""
    for pid in _pids(netns):
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _pids(netns) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _pids(netns):
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signum)


# ---------------------------------------------------------------------------------------------- the scenario


@dataclass
class Step:
    title: str
    check: Callable[[], str]


def workload(lab: Lab, *args: str) -> dict[str, Any]:
    result = lab.run("client", lab.python, f"{lab.repo}/vagrant/workload.py", *args)
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise LabError(f"workload.py {' '.join(args)} printed nothing: {result.stderr.strip()[-800:]}")
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise LabError(message)


def access_log(lab: Lab, node: str = "cluster") -> list[dict[str, Any]]:
    return [json.loads(line) for line in lab.access_log(node).read_text().splitlines() if line.startswith("{")]


def sessions(lab: Lab, user: str, kind: str, node: str) -> list[str]:
    out = lab.run(node, "wardgatectl", "get", "sessions", "-o", "json", check=True).stdout
    items = json.loads(out)["items"]
    return [s["metadata"]["name"] for s in items if s["spec"]["user"] == user and s["spec"]["type"] == kind]


def wait_until(condition: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def kill_node(lab: Lab, machine: str) -> None:
    """Every Wardgate process of a node dies at once (SIGKILL: no goodbye), as when its machine fails."""
    if lab.systemd:
        units = ("wardgate-cluster", "wardgate-agent")
        # Each unit's processes (wireguard-go too). In a container systemd cannot signal a whole cgroup and says
        # so (EIO, exit 1) after it signalled the processes it knows: hence the check below, not the exit code.
        lab.run(machine, "systemctl", "kill", "--signal=KILL", *units)
        lab.run(machine, "systemctl", "stop", *units, check=True)  # no Restart=on-failure either
        lab.run(machine, "ip", "link", "del", lab.interfaces[machine])  # a kernel device outlives its agent
        left = lab.run(machine, "pgrep", "-a", "-f", "wardgate-|wireguard-go").stdout.strip()
        expect(not left, f"{machine}: still running after the kill: {left}")
        return
    for pid in _pids(lab.netns(machine)):
        _signal(pid, signal.SIGKILL)
    expect(wait_until(lambda: not _pids(lab.netns(machine)), 10), f"processes left in {lab.netns(machine)}")


def scenario(lab: Lab) -> list[Step]:
    env = lab_env()
    domain = env["WARDGATE_DOMAIN"]
    live = {"node": "cluster"}  # the node the revocation steps use: the other one once the first is killed

    def client_based() -> str:
        answer = workload(lab, "private", "llm", "--message", "hello over wireguard")
        expect(answer.get("status") == 200, f"expected 200, got {answer}")
        expect(answer.get("content") == "echo: hello over wireguard", f"unexpected answer {answer}")
        entry = [e for e in access_log(lab) if e.get("service") == "llm"][-1]
        expect(entry.get("user") == "alice" and entry.get("listener") == "tunnel", f"access log says {entry}")
        return f"200 {answer['content']!r}; access log: user alice, listener tunnel, from {entry['remote']}"

    def client_less() -> str:
        issued = workload(lab, "token")
        expect(issued.get("status") == 200, f"token endpoint: {issued}")
        answer = workload(lab, "public", "chat", "--message", "hello over https")
        expect(answer.get("status") == 200, f"expected 200, got {answer}")
        expect(answer.get("content") == "echo: hello over https", f"unexpected answer {answer}")
        return f"token from https://{domain}/oauth2/token, then 200 {answer['content']!r} from {answer['url']}"

    def denied() -> str:
        answer = workload(lab, "public", "chat", "--model", "gpt-4.5-preview")
        expect(answer.get("status") == 403, f"expected 403, got {answer}")
        entry = [e for e in access_log(lab) if e.get("service") == "chat"][-1]
        decision = entry.get("decision") or {}
        expect(decision.get("effect") == "DENY", f"access log says {entry}")
        return f"403 for model gpt-4.5-preview; access log: user {entry.get('user')}, {decision}"

    def lua() -> str:
        message = "one two three four five six seven eight nine ten eleven twelve"
        answer = workload(
            lab, "public", "safe-chat", "--model", "gpt-4o", "--max-tokens", "100",
            "--message", message,
        )  # fmt: skip
        expect(answer.get("status") == 200, f"expected 200, got {answer}")
        expect(answer.get("model") == "gpt-4o-mini", f"the plugin did not swap the model: {answer}")
        expect(answer.get("finish_reason") == "length", f"the plugin did not cap max_tokens: {answer}")
        expect(answer.get("plugin") == "cost-control", f"no x-wardgate-plugin header: {answer}")
        return f"asked gpt-4o with max_tokens 100; got {answer['model']}, {answer['content']!r} (cut: length)"

    def revoke_client() -> str:
        node = live["node"]
        (session,) = sessions(lab, "alice", "CLIENT", node)
        interface = lab.interfaces[node]
        peers = lab.run(node, "wg", "show", interface, "peers", check=True).stdout.split()
        expect(len(peers) == 1, f"expected alice's one peer on {interface}, `wg show` lists {peers}")
        lab.run(node, "wardgatectl", "delete", "session", session, check=True)
        started = time.monotonic()
        gone = wait_until(lambda: not lab.run(node, "wg", "show", interface, "peers").stdout.split(), 10)
        expect(gone, f"alice's peer still on {interface} 10 s after her session was deleted")
        elapsed = time.monotonic() - started
        answer = workload(lab, "--timeout", "2", "private", "llm")
        expect(answer.get("status") is None, f"alice's app still reaches llm after revocation: {answer}")
        ended = wait_until(lambda: lab.run("client", "wardgate", "status").returncode == 3, 15)
        status = lab.run("client", "wardgate", "status")
        expect(ended and "revoked" in status.stdout, f"wardgate status after revocation: {status.stdout}")
        return (
            f"session {session} deleted on {node}; her peer left `wg show {interface}` {elapsed * 1000:.0f} ms"
            " after `wardgatectl delete` returned; her app gets no connection; `wardgate status` exits 3 (revoked)"
        )

    def revoke_workload() -> str:
        (session,) = sessions(lab, "ci-bot", "CLIENTLESS", live["node"])
        lab.run(live["node"], "wardgatectl", "delete", "session", session, check=True)
        answer = workload(lab, "public", "chat")
        expect(answer.get("status") == 401, f"expected 401 for the revoked token, got {answer}")
        return f"session {session} deleted; the same access token now gets 401 at once"

    def node_dies() -> str:
        status = lab.run("client", "wardgate", "status", check=True).stdout
        expect(f"node lab-node at {env['CLUSTER_IP']}:51820" in status, f"alice is not on lab-node: {status}")
        kill_node(lab, "cluster")
        killed = time.monotonic()
        live["node"] = "cluster2"
        answer: dict[str, Any] = {}
        while time.monotonic() - killed < 60 and answer.get("status") != 200:
            answer = workload(lab, "--timeout", "2", "private", "llm", "--message", "after the kill")
        tunnel = time.monotonic() - killed
        expect(answer.get("content") == "echo: after the kill", f"no answer through the tunnel in 60 s: {answer}")
        status = lab.run("client", "wardgate", "status").stdout
        expect(
            f"node lab-node2 at {env['CLUSTER2_IP']}:51820" in status and "moved from node lab-node" in status,
            f"wardgate status after the failover: {status}",
        )
        entry = [e for e in access_log(lab, "cluster2") if e.get("service") == "llm"][-1]
        expect(entry.get("user") == "alice" and entry.get("listener") == "tunnel", f"cluster2's log says {entry}")
        started = time.monotonic()  # ci-bot keeps the token lab-node issued: lab-node2 knows it from the store
        answer = workload(lab, "public", "chat", "--message", "after the kill")
        public = time.monotonic() - started
        expect(answer.get("content") == "echo: after the kill", f"client-less after the kill: {answer}")
        served = [e for e in access_log(lab, "cluster2") if e.get("service") == "chat"]
        expect(bool(served) and served[-1].get("status") == 200, f"cluster2 served no chat call: {served[-1:]}")
        return (
            f"every process of lab-node SIGKILLed; alice's app answered through the tunnel again after {tunnel:.1f} s"
            f" (`wardgate status`: node lab-node2 at {env['CLUSTER2_IP']}:51820, moved from lab-node); ci-bot's"
            f" chat call with its token from lab-node: {answer['url']} (both nodes' addresses) answered by lab-node2"
            f" in {public:.1f} s"
        )

    return [
        Step(f"client-based: alice's app calls http://llm.local.{domain} with no API key", client_based),
        Step(f"client-less: ci-bot, OAuth2 client credentials, https://chat.{domain}", client_less),
        Step("denied: a model the chat Service's policy does not allow", denied),
        Step("Lua plugin: safe-chat turns gpt-4o into gpt-4o-mini and caps max_tokens", lua),
        Step("kill a node: lab-node dies; the client and a client-less workload go on through lab-node2", node_dies),
        Step("revocation on lab-node2: alice's CLIENT session deleted, her tunnel stops", revoke_client),
        Step("revocation on lab-node2: ci-bot's CLIENTLESS session deleted, its token stops", revoke_workload),
    ]


def run_scenario(lab: Lab) -> bool:
    passed = 0
    steps = scenario(lab)
    for number, step in enumerate(steps, 1):
        started = time.monotonic()
        try:
            detail = step.check()
        except Exception as exc:  # a step that cannot even run is a failed step, not a crashed lab
            print(f"[{number}/{len(steps)}] FAIL {step.title}\n      {type(exc).__name__}: {exc}", flush=True)
            continue
        passed += 1
        took = (time.monotonic() - started) * 1000
        print(f"[{number}/{len(steps)}] PASS {step.title} ({took:.0f} ms)\n      {detail}", flush=True)
    print(f"lab: {passed} of {len(steps)} steps passed", flush=True)
    return passed == len(steps)


def dump_logs(lab: Lab) -> None:
    if lab.systemd:
        for machine in MACHINES:
            with suppress(Exception):  # a container that never booted has no journal to show
                units = ["-u", "wardgate-*", "-u", "postgresql*"]
                journal = lab.run(machine, "journalctl", "--no-pager", "-n", "40", *units).stdout
                print(f"----- {machine}: journalctl -u 'wardgate-*' (last 40 lines)\n{journal}")
        return
    for log in sorted(lab.state.glob("*/log/*.log")):
        print(f"----- {log.relative_to(lab.state)} (last 40 lines)")
        print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))


# ---------------------------------------------------------------------------------------------- commands


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so `finally` tears the lab down either way (also when the
    process was started with SIGINT ignored, as a background job of a script is)."""

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def shielded_teardown(lab: Lab) -> list[str]:
    """Tear down with Ctrl-C and SIGTERM ignored: a second Ctrl-C must not leave half a lab behind."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return teardown(lab)
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


def taken(lab: Lab) -> bool:
    """Whether a lab of this name runs already (say so: it is not ours to build over or to tear down)."""
    found = [ns for ns in lab.namespaces if (NETNS_DIR / ns).exists()]
    if found:
        print(f"lab: {', '.join(found)} exist already: use that lab, or `make lab-down LAB_NAME={lab.name}` first")
    return bool(found)


def cmd_run(lab: Lab) -> int:
    if taken(lab):
        return 1
    ok = False
    try:
        with interrupts_as_exceptions():
            build(lab)
            provision(lab)
            ok = run_scenario(lab)
    except (LabError, containers.ContainerError) as exc:
        print(f"lab: {exc}", flush=True)
    except KeyboardInterrupt:
        print("lab: interrupted", flush=True)
    finally:
        if not ok and lab.state.exists():
            dump_logs(lab)
        problems = shielded_teardown(lab)
        print("lab: torn down" if not problems else f"lab: teardown left {problems}", flush=True)
    return 0 if ok and not problems else 1


def cmd_up(lab: Lab) -> int:
    if taken(lab):
        return 1
    try:
        with interrupts_as_exceptions():
            build(lab)
            provision(lab)
    except (LabError, containers.ContainerError, KeyboardInterrupt) as exc:
        print(f"lab: {exc or 'interrupted'}", flush=True)
        dump_logs(lab)
        shielded_teardown(lab)
        return 1
    client, cluster = lab.netns("client"), lab.netns("cluster")
    named = "" if lab.name == "wardgate" else f" LAB_NAME={lab.name}"
    if lab.systemd:
        where = f"  logs: journalctl -u 'wardgate-*' on each machine; access log: {lab.access_log()}"
    else:
        status = f"{lab.venv}/bin/wardgate status"
        where = (
            f"  ip netns exec {client} env XDG_CONFIG_HOME={lab.state / 'client' / 'config'} {status}\n"
            f"  logs: {lab.state}/<machine>/log/, access log: {lab.access_log()}"
        )
    print(
        f"""
The lab is up ({lab.state.relative_to(REPO)}). Explore it:
  make lab-shell M=client{named}      # then: wardgate status; {lab.python} {lab.repo}/vagrant/workload.py private llm
  make lab-shell M=cluster{named}     # then: wardgatectl get sessions; wg show {lab.interfaces["cluster"]}
{where}
Take it down with `make lab-down{named}`. Namespaces: {", ".join(lab.namespaces)}; {cluster} runs the cluster.""",
        flush=True,
    )
    return 0


def cmd_down(lab: Lab) -> int:
    problems = shielded_teardown(lab)
    print("lab: torn down" if not problems else f"lab: teardown left {problems}")
    return 0 if not problems else 1


def cmd_shell(lab: Lab, machine: str, command: Sequence[str]) -> int:
    if not (NETNS_DIR / lab.netns(machine)).exists():
        print(f"lab: {lab.netns(machine)} does not exist (`make lab-up` first)", file=sys.stderr)
        return 1
    extra = {"TERM": os.environ.get("TERM", "xterm"), "PS1": f"[lab {machine}] \\w# "}
    shell = ["bash", "-l"] if lab.systemd else ["bash", "--norc", "-i"]  # a container's login shell, as on a VM
    return subprocess.call(lab.command(machine, list(command) or shell, extra), cwd=REPO)


def load(name: str, tag: str | None, venv: Path, systemd: bool) -> Lab:
    """The lab called NAME: as recorded when it was built, else from the arguments."""
    recorded = REPO / ".lab" / name / "lab.json"
    if recorded.exists():
        data = json.loads(recorded.read_text())
        return Lab(data["name"], data["tag"], Path(data["venv"]), data.get("systemd", False))
    return Lab(name, tag or "lab", venv, systemd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vagrant.lab", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "up", "down", "shell"])
    parser.add_argument("machine", nargs="?", choices=MACHINES, help="for `shell`")
    parser.add_argument("rest", nargs="*", help="for `shell`: the command to run (after --)")
    parser.add_argument("--name", help="namespace prefix (default: wardgate; `run` makes a unique one)")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv")
    parser.add_argument("--systemd", action="store_true", help="run, up: machines are containers booting systemd")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("lab: needs root (network namespaces, WireGuard devices)", file=sys.stderr)
        return 2
    missing = [tool for tool in ("ip", "wireguard-go", "wg") if shutil.which(tool) is None]
    if missing or not (args.venv / "bin" / "wardgate-cluster").exists():
        print(f"lab: missing {missing or args.venv}: run `make install` first", file=sys.stderr)
        return 2
    if args.command == "run":
        tag = str(os.getpid() % 10**6)
        return cmd_run(Lab(args.name or f"wglab{tag}", tag, args.venv.resolve(), args.systemd))
    lab = load(args.name or "wardgate", None, args.venv.resolve(), args.systemd)
    if args.command == "up":
        return cmd_up(lab)
    if args.command == "down":
        return cmd_down(lab)
    if args.machine is None:
        parser.error(f"shell: which machine? ({', '.join(MACHINES)})")
    return cmd_shell(lab, args.machine, args.rest)


if __name__ == "__main__":
    sys.exit(main())
