"""The lab's static parts: the Vagrantfile, the provisioning scripts and the unit files agree with each other and
with the namespace lab (`make lab`, tests/netns/test_lab.py runs it). Vagrant cannot boot a VM here, so the
Vagrantfile is evaluated by Ruby against a recorder of Vagrant's configuration calls instead."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
VAGRANT = REPO / "vagrant"
MACHINES = ("db", "cluster", "cluster2", "upstream", "client")
# what each machine runs: cluster2 is the first cluster machine's script, joining instead of initialising
SCRIPTS = {"db": "db", "cluster": "cluster", "cluster2": "cluster", "upstream": "upstream", "client": "client"}
ROLES = {"cluster": {"CLUSTER_ROLE": "init"}, "cluster2": {"CLUSTER_ROLE": "join"}}

# Just enough of Vagrant's configuration API to run the Vagrantfile and print what it configured as JSON.
RECORDER = r"""
require "json"

class Settings
  def initialize; @values = {}; end
  def method_missing(name, *args)
    raise NoMethodError, "#{name}(#{args.inspect}) is not a setting" unless name.to_s.end_with?("=") && args.size == 1
    @values[name.to_s.chomp("=")] = args[0]
  end
  def respond_to_missing?(name, include_private = false) = name.to_s.end_with?("=")
  def to_h = @values
end

class VM
  attr_accessor :box, :hostname
  attr_reader :record
  def initialize
    @record = { "networks" => [], "synced_folders" => [], "provisioners" => [], "providers" => {}, "machines" => [] }
  end
  def network(type, **options) = @record["networks"] << { "type" => type, **options.transform_keys(&:to_s) }
  def synced_folder(host, guest, **options)
    @record["synced_folders"] << { "host" => host, "guest" => guest, **options.transform_keys(&:to_s) }
  end
  def provision(type, **options) = @record["provisioners"] << { "type" => type, **options.transform_keys(&:to_s) }
  def provider(name)
    settings = Settings.new
    yield settings
    (@record["providers"][name] ||= {}).merge!(settings.to_h)
  end
  def define(name, **options)
    machine = Config.new
    yield machine
    @record["machines"] << { "name" => name, "options" => options.transform_keys(&:to_s), **machine.to_h }
  end
  def to_h = { "box" => box, "hostname" => hostname, **@record }
end

class Config
  attr_reader :vm
  def initialize; @vm = VM.new; end
  def to_h = @vm.to_h
end

module Vagrant
  def self.configure(version)
    raise "configuration version #{version}" unless version == "2"
    config = Config.new
    yield config
    puts JSON.generate(config.to_h)
  end
end

path = ARGV.fetch(0)
eval(File.read(path), binding, path)
"""


def lab_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (VAGRANT / "lab.env").read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs if not key.startswith("#")}


def tool(name: str, package: str, unchecked: str) -> str:
    """The path of NAME; a loud skip without it (`make test` installs PACKAGE), and a failure in CI."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (`make test` installs {package}): {unchecked} not checked"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def ruby() -> str:
    return tool("ruby", "ruby", "the Vagrantfile was")


@pytest.fixture(scope="module")
def vagrantfile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    recorder = tmp_path_factory.mktemp("vagrant") / "recorder.rb"
    recorder.write_text(RECORDER)
    result = subprocess.run(
        [ruby(), str(recorder), str(VAGRANT / "Vagrantfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_the_vagrantfile_is_valid_ruby() -> None:
    result = subprocess.run([ruby(), "-c", str(VAGRANT / "Vagrantfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stderr


def test_the_vagrantfile_names_only_provisioning_scripts_that_exist() -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    scripts = re.findall(r'"(provision/[^"]+)"', text)
    assert sorted(set(scripts)) == sorted({f"provision/{s}.sh" for s in SCRIPTS.values()})
    for script in scripts:
        assert (VAGRANT / script).is_file(), script
        assert os.access(VAGRANT / script, os.X_OK), f"{script} is not executable"


def test_the_vagrantfile_describes_the_five_machines_of_the_namespace_lab(vagrantfile: dict[str, Any]) -> None:
    env = lab_env()
    assert vagrantfile["box"] == "debian/bookworm64"
    assert set(vagrantfile["providers"]) == {"virtualbox", "libvirt"}
    (folder,) = vagrantfile["synced_folders"]
    assert (folder["host"], folder["guest"], folder["type"]) == ("..", "/vagrant", "nfs")
    assert (VAGRANT / folder["host"]).resolve() == REPO
    machines = vagrantfile["machines"]
    assert [m["name"] for m in machines] == list(MACHINES)  # the provisioning order the namespace lab uses too
    for machine in machines:
        name = machine["name"]
        assert machine["networks"] == [{"type": "private_network", "ip": env[f"{name.upper()}_IP"]}]
        (provisioner,) = machine["provisioners"]
        assert provisioner["type"] == "shell"
        assert provisioner["path"] == f"provision/{SCRIPTS[name]}.sh"
        # the synced repository, scripts run from it; a cluster machine's role (init or join)
        assert provisioner["env"] == {"WARDGATE_REPO": "/vagrant", **ROLES.get(name, {})}
        assert set(machine["providers"]) == {"virtualbox", "libvirt"}
        assert machine["providers"]["virtualbox"]["memory"] == machine["providers"]["libvirt"]["memory"] >= 1024


def test_the_namespace_lab_runs_the_same_scripts_in_the_same_order() -> None:
    from vagrant import lab

    assert lab.MACHINES == MACHINES
    assert lab.VAGRANT == VAGRANT
    assert {m: (f"{SCRIPTS[m]}.sh", ROLES.get(m, {})) for m in MACHINES} == lab.PROVISION
    env = lab_env()
    assert len({env[f"{m.upper()}_IP"] for m in MACHINES}) == len(MACHINES)  # an address of its own each


def test_the_cluster_script_inits_one_node_and_joins_the_other_with_the_store_key_over_the_share() -> None:
    script = (VAGRANT / "provision" / "cluster.sh").read_text()
    init = re.search(r'wardgate-cluster" init .*\n.*--store "\$store"', script)
    join = re.search(
        r'wardgate-cluster" join .*--store "\$store" \\\n\s*--store-key-file "\$WARDGATE_ETC/store.key"', script
    )
    assert init and join, "cluster.sh must init with --store and join with the handed-over store key"
    assert 'install -m 0600 "$WARDGATE_HOME/store.key" "$LAB_SHARE/store.key"' in script
    assert 'install -m 0600 "$LAB_SHARE/store.key" "$WARDGATE_ETC/store.key"' in script
    db = (VAGRANT / "provision" / "db.sh").read_text()
    assert "postgresql://wardgate:$password@$DB_IP:$DB_PORT/wardgate" in db and '"$LAB_SHARE/store.url"' in script


def test_the_scripts_parse_and_start_only_units_that_ship() -> None:
    units = {p.stem for p in (VAGRANT / "systemd").glob("*.service")}
    started = set()
    for script in sorted((VAGRANT / "provision").glob("*.sh")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        started |= set(re.findall(r"^\s*start_service (\S+)", script.read_text(), re.M))
    assert started == units, f"started {sorted(started)}, shipped {sorted(units)}"


def test_every_unit_runs_an_installed_command_with_the_shared_environment() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for unit in sorted((VAGRANT / "systemd").glob("*.service")):
        text = unit.read_text()
        assert "EnvironmentFile=/etc/wardgate/lab.env" in text, unit.name
        (command,) = re.findall(r"^ExecStart=(.*)$", text, re.M)
        # systemd never expands a variable in the program's own path, only in arguments: hence /usr/bin/env
        env, program, *arguments = command.split()
        assert env == "/usr/bin/env" and program.startswith("${WARDGATE_VENV}/bin/"), f"{unit.name}: {command}"
        name = program.rsplit("/", 1)[1]
        if name == "python":
            module = arguments[1]
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{unit.name}: no module {module}"
        else:
            assert name in scripts, f"{unit.name}: {name} is not a console script of the project"
        for variable in re.findall(r"\$\{(\w+)\}", command):
            writers = (VAGRANT / "provision" / "common.sh").read_text() + "".join(
                p.read_text() for p in (VAGRANT / "provision").glob("*.sh")
            )
            assert variable in writers, f"{unit.name}: ${{{variable}}} is never written to lab.env"
        assert "[Install]" in text and "WantedBy=multi-user.target" in text, unit.name


def test_systemd_accepts_the_unit_files(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd", "the unit files were")
    units = sorted(str(p) for p in (VAGRANT / "systemd").glob("*.service"))
    # verify names the unit files' own problems (a bad ExecStart, an unknown setting) and exits non-zero
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    problems = [line for line in result.stderr.splitlines() if "wardgate-" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_the_lab_services_reach_the_upstream_machine() -> None:
    env = lab_env()
    upstream = f"http://{env['UPSTREAM_IP']}:{env['UPSTREAM_PORT']}/v1"
    found = 0
    for manifest in sorted((REPO / "configs" / "lab").glob("*.yaml")):
        for document in yaml.safe_load_all(manifest.read_text()):
            if document["kind"] == "Service":
                assert document["spec"]["config"]["upstream"]["url"] == upstream, manifest.name
                found += 1
    assert found == 3
