"""Tests for lab.topology (profiles, validation) and lab.spec (addressing of a planned lab)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path

import pytest

from lab import leases, names, spec, topology
from lab.cli import main
from lab.errors import LabError
from lab.names import name_problem as check_lab_name
from lab.names import validate_lab_name
from lab.topology import TopologyError, parse

# Plenty of host memory, so only the tests about memory see the host check.
BIG_HOST = 1_000_000
# The host route the CLI tests pretend to have (explicit subnets must stay clear of it).
ROUTED = ipaddress.IPv4Network("10.77.0.0/16")


@pytest.fixture(autouse=True)
def _no_host_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads this host's routes or writes to its real state directory."""
    monkeypatch.setattr(leases, "_routes", lambda: [])
    monkeypatch.setenv("GANETI_LAB_STATE", str(tmp_path / "state"))

LAB = """
[lab]
name = "t"
"""
NETWORKS = """
[networks.mgmt]
role = "management"
[networks.lab]
role = "cluster"
"""
MACHINES = """
[machines.service]
role = "service"
memory = 256
[machines.node1]
role = "hypervisor"
memory = 512
[machines.node2]
role = "hypervisor"
memory = 512
"""
LAYOUTS = """
[layouts.main.c1]
nodes = ["node1", "node2"]
"""
# A hypervisor that belongs to no cluster: faults in it cannot cascade into the layouts.
SPARE = """
[machines.node3]
role = "hypervisor"
memory = 512
"""


def toml(
    *,
    lab: str = LAB,
    networks: str = NETWORKS,
    machines: str = MACHINES,
    layouts: str = LAYOUTS,
    extra: str = "",
) -> str:
    """A valid minimal topology; each keyword replaces one part of it."""
    return "\n".join([lab, networks, machines, extra, layouts])


def problems(text: str, host_memory_mib: int = BIG_HOST) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse(text, "test.toml", host_memory_mib=host_memory_mib)
    assert info.value.problems, "a TopologyError must carry at least one problem"
    return info.value.problems


def only(found: list[str], location: str, *fragments: str) -> str:
    """Exactly one problem, at ``location``, mentioning every fragment."""
    assert len(found) == 1, f"expected one problem at {location}, got: {found}"
    problem = found[0]
    assert problem.startswith(f"{location}: "), problem
    for fragment in fragments:
        assert fragment in problem, f"{fragment!r} not in {problem!r}"
    return problem


# Built-in profiles -----------------------------------------------------------------------------


def test_builtin_profiles_are_listed() -> None:
    assert {"default", "two-racks", "tiny"} <= set(topology.profiles())


def test_default_profile() -> None:
    t = topology.load("default", host_memory_mib=BIG_HOST)
    assert t.name == "default"
    assert [m.name for m in t.machines] == ["service", "node1", "node2", "node3", "node4"]
    assert t.service.name == "service"
    assert [m.name for m in t.hypervisors] == ["node1", "node2", "node3", "node4"]
    assert set(t.layouts) == {"one-cluster", "two-clusters"}
    assert t.default_layout == "one-cluster"
    (cluster1,) = t.layout()
    assert cluster1.name == "cluster1"
    assert cluster1.nodes == ("node1", "node2", "node3", "node4")
    assert cluster1.master == "node1"
    assert [(c.name, c.nodes) for c in t.layout("two-clusters")] == [
        ("rack1", ("node1", "node2")),
        ("rack2", ("node3", "node4")),
    ]
    # Hypervisors take the [defaults.hypervisor] values, the service its own.
    node1 = t.machine("node1")
    assert (node1.cpus, node1.memory_mib, node1.disks_gib) == (1, 1536, (24,))
    assert t.service.memory_mib == 768
    assert t.memory_mib == 768 + 4 * 1536
    assert {n.role: n.subnet for n in t.networks} == {"management": None, "cluster": None}


def test_two_racks_profile() -> None:
    t = topology.load("two-racks", host_memory_mib=BIG_HOST)
    assert len(t.machines) == 5
    assert t.default_layout == "two-clusters"
    assert [c.name for c in t.layout()] == ["rack1", "rack2"]
    assert set(t.layouts) == {"one-cluster", "two-clusters"}


def test_tiny_profile() -> None:
    t = topology.load("tiny", host_memory_mib=BIG_HOST)
    assert [(m.name, m.role, m.memory_mib) for m in t.machines] == [
        ("service", "service", 512),
        ("node1", "hypervisor", 1024),
    ]
    assert t.default_layout == "single"
    assert [(c.name, c.nodes) for c in t.layout()] == [("solo", ("node1",))]


def test_unknown_machine_and_layout_name_lookups() -> None:
    t = topology.load("tiny", host_memory_mib=BIG_HOST)
    with pytest.raises(LabError, match="no machine 'node9'"):
        t.machine("node9")
    with pytest.raises(LabError, match=r"no layout 'nope'.*\n.*fix: choose one of: single"):
        t.layout("nope")


def test_resolve_rejects_unknown_profile() -> None:
    with pytest.raises(LabError, match="topology no-such-profile not found") as info:
        topology.resolve("no-such-profile")
    assert "default" in str(info.value) and "tiny" in str(info.value)


def test_minimal_helper_is_valid() -> None:
    t = parse(toml(), "test.toml", host_memory_mib=BIG_HOST)
    assert [m.name for m in t.machines] == ["service", "node1", "node2"]
    assert t.default_layout == "main"  # the first layout when none is named


# Malformed topologies: one fault each ----------------------------------------------------------


def test_toml_syntax_error() -> None:
    text = toml(machines=MACHINES + '\n[machines.node3\nrole = "hypervisor"\n')
    (problem,) = problems(text)
    assert problem.startswith("TOML syntax: ")
    line = text.splitlines().index("[machines.node3") + 1
    assert f"(at line {line}," in problem, (line, problem)


def test_unknown_key_suggests_the_right_one() -> None:
    machines = MACHINES.replace("memory = 512\n", "memroy = 512\n", 1)
    only(problems(toml(machines=machines)), "machines.node1.memroy",
         "unknown key", "did you mean 'memory'?",
         "allowed: cpus, disk_cache, disks, memory, role")


def test_unknown_top_level_key() -> None:
    only(problems(toml(extra="[layout.x.c9]\nnodes = []\n")), "layout",
         "unknown key", "did you mean 'layouts'?")


def test_unknown_key_without_close_match_has_no_suggestion() -> None:
    machines = MACHINES.replace('role = "service"', 'role = "service"\nzzz = 1')
    problem = only(problems(toml(machines=machines)), "machines.service.zzz", "unknown key")
    assert "did you mean" not in problem


def test_memory_of_wrong_type() -> None:
    only(problems(toml(extra=SPARE.replace("512", '"1G"'))), "machines.node3.memory",
         "must be an integer", "'1G'")


def test_cpus_boolean_is_not_an_integer() -> None:
    only(problems(toml(extra=SPARE + "cpus = true\n")), "machines.node3.cpus",
         "must be an integer", "True")


def test_memory_below_role_minimum() -> None:
    only(problems(toml(extra=SPARE.replace("512", "256"))), "machines.node3.memory",
         "256 is out of range 512..")


def test_disk_cache_is_unsafe_unless_a_machine_or_role_default_says_otherwise() -> None:
    t = parse(toml(extra="[defaults.hypervisor]\ndisk_cache = \"none\"\n"
                         + SPARE + 'disk_cache = "directsync"\n'), "t.toml", BIG_HOST)
    caches = {m.name: m.disk_cache for m in t.machines}
    assert caches == {"service": "unsafe", "node1": "none", "node2": "none",
                      "node3": "directsync"}, caches
    assert {m.disk_cache for m in parse(toml(), "t.toml", BIG_HOST).machines} == {"unsafe"}


def test_disks_of_wrong_type() -> None:
    only(problems(toml(extra=SPARE + "disks = 24\n")), "machines.node3.disks",
         "must be a list of sizes in GiB")


@pytest.mark.parametrize("name", ["Node3", "node_3", "3node", "n" * 32])
def test_invalid_machine_name(name: str) -> None:
    only(problems(toml(extra=SPARE.replace("node3", name))), f"machines.{name}",
         f"name {name!r} must be a DNS label")


def test_invalid_lab_name() -> None:
    only(problems(toml(lab='[lab]\nname = "My_Lab"\n')), "lab.name", "must be a DNS label")


def test_duplicate_node_in_one_layout() -> None:
    layouts = LAYOUTS + '[layouts.main.c2]\nnodes = ["node1"]\n'
    only(problems(toml(layouts=layouts)), "layouts.main.c2.nodes",
         "'node1' is already a node of cluster c1")


def test_same_node_in_two_layouts_is_fine() -> None:
    layouts = LAYOUTS + '[layouts.other.c2]\nnodes = ["node1", "node2"]\n'
    t = parse(toml(layouts=layouts), "test.toml", host_memory_mib=BIG_HOST)
    assert [c.nodes for c in t.layout("other")] == [("node1", "node2")]
    # Cluster indexes run across layouts (they fix the cluster IPs).
    assert [c.index for c in (*t.layout("main"), *t.layout("other"))] == [0, 1]


def test_cluster_named_like_a_machine() -> None:
    layouts = LAYOUTS + '[layouts.main.service]\nnodes = ["node3"]\n'
    (problem,) = problems(toml(layouts=layouts, extra=SPARE))
    # The location names the layouts table and the clashing cluster.
    assert problem.startswith("layouts.") and ".service: " in problem, problem
    assert "cannot have the name of a machine" in problem


def test_overlapping_explicit_subnets() -> None:
    networks = NETWORKS.replace('"management"', '"management"\nsubnet = "10.9.0.0/16"')
    networks = networks.replace('"cluster"', '"cluster"\nsubnet = "10.9.4.0/24"')
    only(problems(toml(networks=networks)), "networks.lab.subnet",
         "10.9.4.0/24 overlaps networks.mgmt (10.9.0.0/16)")


def test_explicit_subnets_that_do_not_overlap() -> None:
    networks = NETWORKS.replace('"management"', '"management"\nsubnet = "10.9.0.0/24"')
    networks = networks.replace('"cluster"', '"cluster"\nsubnet = "10.9.1.0/24"')
    t = parse(toml(networks=networks), "test.toml", host_memory_mib=BIG_HOST)
    assert t.network("cluster").subnet == ipaddress.IPv4Network("10.9.1.0/24")


@pytest.mark.parametrize("cluster_toml", ["nodes = []\n", 'vg_name = "xenvg"\n'])
def test_cluster_with_no_nodes(cluster_toml: str) -> None:
    layouts = LAYOUTS + "[layouts.main.c2]\n" + cluster_toml
    only(problems(toml(layouts=layouts)), "layouts.main.c2.nodes",
         "a cluster needs at least one node")


def test_layout_with_no_cluster() -> None:
    only(problems(toml(layouts=LAYOUTS + "[layouts.empty]\n")), "layouts.empty",
         "must hold at least one cluster table")


def test_memory_the_host_does_not_have() -> None:
    # 256 + 512 + 512 = 1280 MiB, but 2000 - 1024 (kept for the host) = 976.
    only(problems(toml(), host_memory_mib=2000), "machines",
         "need 1280 MiB", "this host has 2000 MiB", "lower `memory`")


def test_memory_that_fits_the_host() -> None:
    t = parse(toml(), "test.toml", host_memory_mib=1280 + topology.HOST_MEMORY_RESERVE_MIB)
    assert t.memory_mib == 1280


def test_unknown_machine_role() -> None:
    only(problems(toml(extra=SPARE.replace('"hypervisor"', '"storage"'))),
         "machines.node3.role", "'storage' is not one of: service, hypervisor")


def test_cluster_node_that_is_not_a_machine() -> None:
    layouts = LAYOUTS.replace('"node2"]', '"node2", "node9"]')
    only(problems(toml(layouts=layouts)), "layouts.main.c1.nodes",
         "'node9' is not a machine of this topology")


def test_service_machine_as_cluster_node() -> None:
    layouts = LAYOUTS.replace('"node2"]', '"node2", "service"]')
    only(problems(toml(layouts=layouts)), "layouts.main.c1.nodes",
         "'service' is a service, not a hypervisor")


def test_unknown_default_layout() -> None:
    only(problems(toml(lab='[lab]\nname = "t"\ndefault_layout = "nope"\n')),
         "lab.default_layout", "'nope' is not a layout", "choose one of: main")


def test_no_service_machine() -> None:
    machines = MACHINES.replace('[machines.service]\nrole = "service"\nmemory = 256\n', "")
    only(problems(toml(machines=machines)), "machines",
         "exactly one machine with role 'service', found 0 (none)")


def test_two_service_machines() -> None:
    extra = '[machines.service2]\nrole = "service"\nmemory = 256\n'
    only(problems(toml(extra=extra)), "machines",
         "exactly one machine with role 'service', found 2 (service, service2)")


def test_no_machines() -> None:
    found = problems(toml(machines="", layouts=""))
    assert [p.split(": ", 1)[0] for p in found] == ["machines", "layouts"], found
    assert "missing or empty" in found[0] and "missing or empty" in found[1]


def test_networks_missing_the_cluster_network() -> None:
    networks = '[networks.mgmt]\nrole = "management"\n'
    only(problems(toml(networks=networks)), "networks",
         "exactly one network with role 'cluster', found 0")


def test_two_management_networks() -> None:
    networks = NETWORKS + '[networks.mgmt2]\nrole = "management"\n'
    only(problems(toml(networks=networks)), "networks",
         "exactly one network with role 'management', found 2")


def test_networks_missing_entirely() -> None:
    only(problems(toml(networks="")), "networks", "missing", "`management`", "`cluster`")


def test_subnet_too_small() -> None:
    networks = NETWORKS.replace('"cluster"', '"cluster"\nsubnet = "10.9.0.0/28"')
    only(problems(toml(networks=networks)), "networks.lab.subnet",
         "10.9.0.0/28 is too small", "/24")


@pytest.mark.parametrize("subnet", ["banana", "10.9.0.0/33", "10.9.0.1/24"])
def test_invalid_subnet_string(subnet: str) -> None:
    networks = NETWORKS.replace('"cluster"', f'"cluster"\nsubnet = "{subnet}"')
    found = problems(toml(networks=networks))
    # The network with the bad subnet is dropped, so the role count also complains; the first
    # problem is the real one.
    problem = found[0]
    assert problem.startswith("networks.lab.subnet: "), found
    assert f"{subnet!r} is not an IPv4 subnet" in problem
    assert '"auto"' in problem


def test_invalid_subnet_string_reports_only_the_subnet() -> None:
    networks = NETWORKS.replace('"cluster"', '"cluster"\nsubnet = "banana"')
    only(problems(toml(networks=networks)), "networks.lab.subnet", "not an IPv4 subnet")


def test_bad_machine_value_in_a_cluster_reports_only_the_value() -> None:
    machines = MACHINES.replace("memory = 512", 'memory = "1G"', 1)
    only(problems(toml(machines=machines)), "machines.node1.memory", "must be an integer")


@pytest.mark.parametrize("disks", ["[10]", "[]", "[19, 100]"])
def test_plain_storage_needs_a_big_first_disk(disks: str) -> None:
    machines = MACHINES.replace("memory = 512", f"memory = 512\ndisks = {disks}", 1)
    only(problems(toml(machines=machines)), "machines.node1.disks",
         "`plain` storage needs a first extra disk of at least 20 GiB")


def test_small_disk_is_fine_without_plain_storage() -> None:
    machines = MACHINES.replace("memory = 512", "memory = 512\ndisks = []", 1)
    layouts = LAYOUTS + 'disk_templates = ["file", "diskless"]\n'
    t = parse(toml(machines=machines, layouts=layouts), "test.toml", host_memory_mib=BIG_HOST)
    assert t.machine("node1").disks_gib == ()
    assert t.layout()[0].disk_templates == ("file", "diskless")


def test_unknown_disk_template_and_hypervisor() -> None:
    layouts = LAYOUTS + 'disk_templates = ["plain", "rbd"]\nhypervisors = ["xen-pvm"]\n'
    found = problems(toml(layouts=layouts))
    assert sorted(found) == [
        "layouts.main.c1.disk_templates: unknown: 'rbd'; "
        "choose from plain, sharedfile, file, diskless, drbd",
        "layouts.main.c1.hypervisors: unknown: 'xen-pvm'; choose from fake, kvm",
    ]


def test_duplicate_cluster_name_across_layouts() -> None:
    layouts = LAYOUTS + '[layouts.other.c1]\nnodes = ["node1"]\n'
    only(problems(toml(layouts=layouts)), "layouts.other.c1",
         "duplicate cluster name (also in layouts.main)")


# Reporting -------------------------------------------------------------------------------------


def test_every_fault_is_reported_at_once() -> None:
    lab = '[lab]\nname = "t"\ndefault_layout = "nope"\n'
    machines = MACHINES.replace("memory = 256", "memroy = 256")
    networks = NETWORKS.replace('"cluster"', '"cluster"\nsubnet = "10.9.0.0/28"')
    layouts = LAYOUTS.replace('"node2"]', '"node2", "node9"]')
    found = problems(toml(lab=lab, machines=machines, networks=networks, layouts=layouts))
    locations = sorted(p.split(": ", 1)[0] for p in found)
    assert locations == [
        "lab.default_layout",
        "layouts.main.c1.nodes",
        "machines.service.memroy",
        "networks.lab.subnet",
    ], found


def test_error_message_lists_problems_and_ends_with_the_fix() -> None:
    text = toml(extra=SPARE.replace("512", '"1G"') + 'cpus = "two"\n')
    with pytest.raises(TopologyError) as info:
        parse(text, "broken.toml", host_memory_mib=BIG_HOST)
    message = str(info.value)
    assert message.startswith("invalid topology broken.toml: 2 problem(s)\n")
    assert "  - machines.node3.cpus: must be an integer, not 'two'" in message
    assert "  - machines.node3.memory: must be an integer, not '1G'" in message
    assert message.endswith("\n  fix: correct the file; nothing was created")
    assert info.value.hint == "correct the file; nothing was created"


def test_identical_problems_are_reported_once() -> None:
    # node1 is in a `plain` cluster of two layouts: one problem, not two.
    machines = MACHINES.replace("memory = 512", "memory = 512\ndisks = [5]", 1)
    layouts = LAYOUTS + '[layouts.other.c2]\nnodes = ["node1"]\n'
    only(problems(toml(machines=machines, layouts=layouts)), "machines.node1.disks",
         "at least 20 GiB")


# spec.plan: addressing -------------------------------------------------------------------------

SUBNETS = {"mgmt": "10.201.3.0/24", "lab": "10.201.4.0/24"}
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDummyKeyMaterial user@host"


@pytest.fixture
def plan(tmp_path: Path) -> spec.LabPlan:
    t = topology.load("default", host_memory_mib=BIG_HOST)
    return spec.plan(t, "demo", SUBNETS, tmp_path / "id_ed25519", tmp_path / "console",
                     "kvm", "host-passthrough")


def test_plan_names_and_networks(plan: spec.LabPlan) -> None:
    # "--" ends the lab's part of an object name (lab names never contain it).
    assert plan.prefix == "glab-demo--"
    assert [m.domain for m in plan.machines] == [
        "glab-demo--service", "glab-demo--node1", "glab-demo--node2", "glab-demo--node3",
        "glab-demo--node4",
    ]
    assert [m.fqdn for m in plan.machines][:2] == ["service.lab", "node1.lab"]
    assert (plan.mgmt_subnet, plan.lab_subnet) == ("10.201.3.0/24", "10.201.4.0/24")
    assert (plan.mgmt_network, plan.lab_network) == ("glab-demo--mgmt", "glab-demo--lab")
    assert plan.host_lab_ip == "10.201.4.1"
    assert plan.mgmt_bridge != plan.lab_bridge
    assert all(len(b) <= 15 for b in (plan.mgmt_bridge, plan.lab_bridge))
    assert plan.default_layout == "one-cluster"


def test_plan_macs_and_ips_are_unique_and_in_their_subnets(plan: spec.LabPlan) -> None:
    macs = [m.mgmt_mac for m in plan.machines] + [m.lab_mac for m in plan.machines]
    assert len(set(macs)) == 10
    for mac in macs:
        assert re.fullmatch(r"52:54(:[0-9a-f]{2}){4}", mac), mac
    mgmt = ipaddress.IPv4Network(SUBNETS["mgmt"])
    lab = ipaddress.IPv4Network(SUBNETS["lab"])
    assert [m.mgmt_ip for m in plan.machines] == [f"10.201.3.{i}" for i in range(10, 15)]
    assert [m.lab_ip for m in plan.machines] == [f"10.201.4.{i}" for i in range(10, 15)]
    assert all(ipaddress.IPv4Address(m.mgmt_ip) in mgmt for m in plan.machines)
    assert all(ipaddress.IPv4Address(m.lab_ip) in lab for m in plan.machines)


def test_cluster_ips_are_distinct_across_layouts(plan: spec.LabPlan) -> None:
    clusters = [c for cs in plan.layouts.values() for c in cs]
    assert sorted(c.name for c in clusters) == ["cluster1", "rack1", "rack2"]
    ips = [c.ip for c in clusters]
    assert len(set(ips)) == 3
    lab = ipaddress.IPv4Network(SUBNETS["lab"])
    machine_ips = {m.lab_ip for m in plan.machines}
    instance_ips = set(plan.instance_names.values())
    for ip in ips:
        assert ipaddress.IPv4Address(ip) in lab
        assert ip not in machine_ips and ip not in instance_ips
    (cluster1,) = plan.layouts["one-cluster"]
    assert cluster1.master == "node1.lab"
    assert cluster1.nodes == ["node1.lab", "node2.lab", "node3.lab", "node4.lab"]
    assert [c.master for c in plan.layouts["two-clusters"]] == ["node1.lab", "node3.lab"]


def test_instance_names(plan: spec.LabPlan) -> None:
    assert len(plan.instance_names) == spec.INSTANCE_NAMES
    assert len(set(plan.instance_names.values())) == spec.INSTANCE_NAMES
    assert plan.instance_names["inst1"] == "10.201.4.150"
    lab = ipaddress.IPv4Network(SUBNETS["lab"])
    assert all(ipaddress.IPv4Address(ip) in lab for ip in plan.instance_names.values())


def test_kernel_cmdline(plan: spec.LabPlan) -> None:
    node2 = plan.machine("node2")
    args = spec.kernel_cmdline(plan, node2, PUBLIC_KEY).split()
    assert "lab.hostname=node2" in args
    assert "lab.ip=10.201.4.12/24" in args
    assert "lab.dns=10.201.4.10" in args
    assert "lab.domain=lab" in args
    assert "lab.key=ssh-ed25519:AAAAC3NzaC1lZDI1NTE5AAAAIDummyKeyMaterial:lab-login" in args
    assert "lab.bridge=br0" in args
    assert "root=/dev/vda" in args


def test_kernel_cmdline_of_the_service_has_no_bridge(plan: spec.LabPlan) -> None:
    cmdline = spec.kernel_cmdline(plan, plan.service, PUBLIC_KEY)
    assert "lab.hostname=service" in cmdline.split()
    assert "lab.ip=10.201.4.10/24" in cmdline.split()
    assert "lab.bridge" not in cmdline
    for hv in plan.hypervisors:
        assert "lab.bridge=br0" in spec.kernel_cmdline(plan, hv, PUBLIC_KEY).split()


def test_kernel_cmdline_uses_the_subnet_prefix_length(tmp_path: Path) -> None:
    t = topology.load("tiny", host_memory_mib=BIG_HOST)
    p = spec.plan(t, "t", {"mgmt": "10.201.8.0/24", "lab": "10.202.0.0/22"},
                  tmp_path / "k", tmp_path / "c", "qemu", "custom")
    assert "lab.ip=10.202.0.11/22" in spec.kernel_cmdline(p, p.machine("node1"), PUBLIC_KEY)


def test_hosts_file_lists_every_name(plan: spec.LabPlan) -> None:
    lines = spec.hosts_file(plan).splitlines()
    assert lines[0] == "127.0.0.1 localhost"
    by_name = {}
    for line in lines[1:]:
        ip, fqdn, short = line.split()
        assert fqdn == f"{short}.lab"
        by_name[short] = ip
    for m in plan.machines:
        assert by_name[m.name] == m.lab_ip
    for clusters in plan.layouts.values():
        for c in clusters:
            assert by_name[c.name] == c.ip
    for name, ip in plan.instance_names.items():
        assert by_name[name] == ip
    assert len(by_name) == 5 + 3 + spec.INSTANCE_NAMES == len(lines) - 1
    assert len(set(by_name.values())) == len(by_name), "two names share an address"


def test_plan_round_trips_through_json(plan: spec.LabPlan, tmp_path: Path) -> None:
    path = tmp_path / "lab.json"
    plan.save(path)
    assert spec.LabPlan.load(path) == plan


# Names -----------------------------------------------------------------------------------------


BAD_NAMES = ["", "..", "/", "a/b", " a", "a ", "a\n", "x--y", "x-", "-x", "A", "a" * 32, ".",
             "../x", "a b", "\tx", "a_b", "a.b", "1abc", "ä", "x\n", "a-\n"]
GOOD_NAMES = ["x", "x-2", "default-gw0", "a" * 31, "tiny", "bug-1275"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_check_lab_name_refuses(name: str) -> None:
    problem = check_lab_name(name)
    assert problem is not None
    assert repr(name) in problem
    with pytest.raises(LabError, match=r"invalid lab name: .*\n  fix: choose a name with"):
        validate_lab_name(name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_check_lab_name_accepts(name: str) -> None:
    assert check_lab_name(name) is None
    assert validate_lab_name(name) == name


def test_check_lab_name_says_which_rule() -> None:
    assert "must not contain '--'" in (check_lab_name("x--y") or "")
    assert "must not end with '-'" in (check_lab_name("x-") or "")
    assert "must be a DNS label" in (check_lab_name("a\n") or "")
    assert "must be a string" in (check_lab_name(3) or "")  # type: ignore[arg-type]


def test_one_rule_for_names_everywhere() -> None:
    # lab.names checks the names users give on the command line; topology names obey the same.
    names = pytest.importorskip("lab.names")
    for name in [*BAD_NAMES, *GOOD_NAMES]:
        assert (check_lab_name(name) is None) == (names.name_problem(name) is None), name


def test_name_regex_refuses_a_trailing_newline_even_with_match() -> None:
    assert names.NAME_RE.match("lab\n") is None
    assert names.NAME_RE.match("lab") is not None


# Malformed topologies through the CLI: one clear line, nothing created -------------------------


def _lab(body: str) -> str:
    return toml(lab=f'[lab]\nname = "t"\n{body}\n')


def _net(cluster_lines: str) -> str:
    return toml(networks=NETWORKS.replace('role = "cluster"', f'role = "cluster"\n{cluster_lines}'))


def _spare(lines: str, name: str = "node3") -> str:
    return toml(extra=SPARE.replace("node3", name) + lines)


def _cluster(lines: str, machines: str = MACHINES) -> str:
    return toml(machines=machines, layouts=LAYOUTS + lines)


def _top(lines: str, **parts: str) -> str:
    """Top-level keys must come before the first table header."""
    return toml(**{"lab": lines + "\n" + LAB, **parts})


MANY_MACHINES = "".join(f'[machines.n{i}]\nrole = "hypervisor"\nmemory = 512\n'
                        for i in range(88))
MANY_CLUSTERS = "".join(f'[layouts.l{i}.k{i}]\nnodes = ["node1"]\n' for i in range(50))
SMALL_NODE1 = MACHINES.replace("memory = 512", "memory = 512\ndisks = []", 1)

BAD_TOPOLOGIES: list[tuple[str, str | bytes, str]] = [
    # [lab]
    ("lab-not-a-table", toml(lab='lab = "x"'), "lab: must be a table (a [lab] section), not str"),
    ("lab-name-int", toml(lab="[lab]\nname = 3"), "lab.name: must be a string"),
    ("default-layout-int", _lab("default_layout = 3"), "lab.default_layout: must be a string"),
    ("description-int", _lab("description = 3"), "lab.description: must be a string"),
    ("lab-name-double-dash", toml(lab='[lab]\nname = "x--y"'), "lab.name: name 'x--y' must not "
                                                                "contain '--'"),
    ("lab-name-trailing-dash", toml(lab='[lab]\nname = "x-"'), "must not end with '-'"),
    ("lab-name-newline", toml(lab='[lab]\nname = "ab\\n"'), "lab.name: name 'ab\\n' must be"),
    ("lab-name-uppercase", toml(lab='[lab]\nname = "My_Lab"'), "lab.name: name 'My_Lab'"),
    ("lab-name-too-long", toml(lab=f'[lab]\nname = "{"a" * 32}"'), "at most 31 characters"),
    ("lab-unknown-key", toml(lab='[lab]\nnmae = "t"'), "lab.nmae: unknown key (did you mean"),
    ("unknown-default-layout", _lab('default_layout = "nope"'), "lab.default_layout: 'nope'"),
    # [networks]
    ("networks-not-a-table", _top("networks = 5", networks=""), "networks: must be a table"),
    ("network-not-a-table", toml(networks="[networks]\nx = 5\n" + NETWORKS),
     "networks.x: must be a table"),
    ("subnet-int", _net("subnet = 5"), "networks.lab.subnet: must be a string"),
    ("subnet-public", _net('subnet = "8.8.8.0/24"'), "networks.lab.subnet: 8.8.8.0/24 is not a "
                                                     "private range"),
    ("subnet-loopback", _net('subnet = "127.0.0.0/24"'), "127.0.0.0/24 is the loopback range"),
    ("subnet-link-local", _net('subnet = "169.254.0.0/24"'), "is the link-local range"),
    ("subnet-this-network", _net('subnet = "0.0.0.0/24"'), "0.0.0.0/24 is not a private range"),
    ("subnet-multicast", _net('subnet = "239.1.0.0/24"'), "is not a private range"),
    ("subnet-routed", _net('subnet = "10.77.5.0/24"'),
     "networks.lab.subnet: 10.77.5.0/24 overlaps 10.77.0.0/16, which this host already routes"),
    ("subnet-too-small", _net('subnet = "10.9.0.0/28"'), "10.9.0.0/28 is too small"),
    ("subnet-garbage", _net('subnet = "banana"'), "'banana' is not an IPv4 subnet"),
    ("subnet-host-bits", _net('subnet = "10.9.0.1/24"'), "'10.9.0.1/24' is not an IPv4 subnet"),
    ("network-role-int", toml(networks=NETWORKS.replace('"cluster"', "5")),
     "networks.lab.role: 5 is not one of: management, cluster"),
    ("network-name", toml(networks=NETWORKS.replace("networks.lab", "networks.Lab")),
     "networks.Lab: name 'Lab'"),
    ("network-unknown-key", _net('sub = "auto"'), "networks.lab.sub: unknown key (did you mean"),
    # [defaults]
    ("defaults-not-a-table", _top("defaults = 5"), "defaults: must be a table"),
    ("defaults-role-not-a-table", toml(extra="[defaults]\nhypervisor = 3\n"),
     "defaults.hypervisor: must be a table"),
    ("defaults-memory-string", toml(extra='[defaults.hypervisor]\nmemory = "big"\n'),
     "defaults.hypervisor.memory: must be an integer, not 'big'"),
    ("defaults-disks-int", toml(extra="[defaults.hypervisor]\ndisks = 24\n"),
     "defaults.hypervisor.disks: must be a list of sizes in GiB"),
    ("defaults-cpus-zero", toml(extra="[defaults.service]\ncpus = 0\n"),
     "defaults.service.cpus: 0 is out of range 1..16"),
    ("defaults-unknown-role", toml(extra="[defaults.storage]\ncpus = 1\n"),
     "defaults.storage: unknown key"),
    # [machines]
    ("machines-not-a-table", _top('machines = "x"', machines=""),
     "machines: must be a table of machines"),
    ("machine-not-a-table", toml(machines='[machines]\nnode3 = "x"\n' + MACHINES),
     "machines.node3: must be a table"),
    ("cpus-zero", _spare("cpus = 0\n"), "machines.node3.cpus: 0 is out of range 1..16"),
    ("cpus-float", _spare("cpus = 1.5\n"), "machines.node3.cpus: must be an integer, not 1.5"),
    ("memory-bool", toml(extra=SPARE.replace("512", "true")),
     "machines.node3.memory: must be an integer, not True"),
    ("disk-size-string", _spare('disks = ["24"]\n'), "machines.node3.disks[0]: must be an integer"),
    ("disk-too-big", _spare("disks = [5000]\n"), "machines.node3.disks[0]: 5000 is out of range"),
    ("disk-cache-unknown", _spare('disk_cache = "fast"\n'),
     "machines.node3.disk_cache: 'fast' is not a libvirt cache mode; choose one of: unsafe,"),
    ("defaults-disk-cache-bool", toml(extra="[defaults.hypervisor]\ndisk_cache = true\n"),
     "defaults.hypervisor.disk_cache: True is not a libvirt cache mode"),
    ("machine-role-int", toml(extra=SPARE.replace('"hypervisor"', "5")),
     "machines.node3.role: 5 is not one of: service, hypervisor"),
    ("machine-named-instance", _spare("", "inst5"), "machines.inst5: 'inst5' is reserved"),
    ("machine-named-localhost", _spare("", "localhost"), "machines.localhost: 'localhost' is "
                                                         "reserved"),
    ("machine-double-dash", _spare("", "node--3"), "machines.node--3: name 'node--3' must not"),
    ("machine-markup", _spare("", '"[/x]"'), 'machines."[/x]": name \'[/x]\' must be a DNS'),
    ("machine-newline", _spare("", '"node3\\n"'), 'machines."node3\\n": name \'node3\\n\''),
    ("machine-unknown-key", _spare("memroy = 1\n"), "machines.node3.memroy: unknown key"),
    ("too-many-machines", toml(extra=MANY_MACHINES),
     "machines: 91 machines do not fit the lab's address plan (at most 90"),
    ("no-service", toml(machines=MACHINES.replace('role = "service"\nmemory = 256',
                                                  'role = "hypervisor"\nmemory = 512')),
     "machines: needs exactly one machine with role 'service', found 0"),
    # [layouts]
    ("layouts-not-a-table", _top("layouts = 5", layouts=""), "layouts: must be a table"),
    ("layout-not-a-table", toml(layouts="[layouts]\nmain = 5\n"),
     "layouts.main: must hold at least one cluster table"),
    ("cluster-not-a-table", toml(layouts="[layouts.main]\nc1 = 5\n"),
     "layouts.main.c1: must be a cluster table"),
    ("nodes-string", toml(layouts=LAYOUTS.replace('["node1", "node2"]', '"node1"')),
     "layouts.main.c1.nodes: must be a list of machine names, e.g. [\"node1\"], not 'node1'"),
    ("nodes-int-entry", toml(layouts=LAYOUTS.replace('"node1",', "1,")),
     "layouts.main.c1.nodes: must be a list of machine names (strings)"),
    ("nodes-nested-list", toml(layouts=LAYOUTS.replace('"node1",', '["node1"],')),
     "not ['node1']"),
    ("nodes-unknown", toml(layouts=LAYOUTS.replace('"node2"]', '"node9"]')),
     "layouts.main.c1.nodes: 'node9' is not a machine"),
    ("nodes-empty", toml(layouts=LAYOUTS.replace('["node1", "node2"]', "[]")),
     "layouts.main.c1.nodes: a cluster needs at least one node"),
    ("disk-templates-string", _cluster('disk_templates = "plain"\n'),
     "layouts.main.c1.disk_templates: must be a list"),
    ("disk-templates-int-entry", _cluster("disk_templates = [1]\n"),
     "layouts.main.c1.disk_templates: must be a list of strings"),
    ("disk-templates-empty", _cluster("disk_templates = []\n"),
     "layouts.main.c1.disk_templates: must not be empty"),
    ("disk-templates-unknown", _cluster('disk_templates = ["rbd"]\n'),
     "layouts.main.c1.disk_templates: unknown: 'rbd'; choose from"),
    ("disk-templates-twice", _cluster('disk_templates = ["file", "file"]\n'),
     "layouts.main.c1.disk_templates: lists 'file' more than once"),
    ("hypervisors-int", _cluster("hypervisors = 5\n"), "layouts.main.c1.hypervisors: must be a "
                                                       "list"),
    ("hypervisors-empty", _cluster("hypervisors = []\n"),
     "layouts.main.c1.hypervisors: must not be empty; choose from fake, kvm"),
    ("hypervisors-int-entry", _cluster('hypervisors = ["kvm", 3]\n'), "not 3"),
    ("hypervisors-unknown", _cluster('hypervisors = ["xen-pvm"]\n'), "unknown: 'xen-pvm'"),
    ("vg-name-int", _cluster("vg_name = 7\n"), "layouts.main.c1.vg_name: must be a string"),
    ("version-number", _cluster("version = 3.1\n"),
     "layouts.main.c1.version: must be a string, e.g. \"3.1\""),
    ("version-unknown", _cluster('version = "3.2"\n'),
     "layouts.main.c1.version: Ganeti '3.2' is not in the lab's images; choose one of: 3.0, 3.1"),
    ("vg-name-shell", _cluster('vg_name = "xenvg; rm -rf /"\n'),
     "layouts.main.c1.vg_name: 'xenvg; rm -rf /' is not a safe LVM volume group name"),
    ("vg-name-option", _cluster('vg_name = "-ff"\n'), "'-ff' is not a safe LVM volume group"),
    ("vg-names-differ", _cluster('[layouts.other.c2]\nnodes = ["node1"]\nvg_name = "vg2"\n'),
     "layouts.other.c2.vg_name: 'vg2' differs from 'xenvg' of layouts.main.c1"),
    ("drbd-one-node", toml(layouts='[layouts.main.c1]\nnodes = ["node1"]\n'
                                   'disk_templates = ["drbd"]\n'),
     "layouts.main.c1.disk_templates: `drbd` mirrors every disk on a second node"),
    ("drbd-without-disk", _cluster('disk_templates = ["drbd", "file"]\n', SMALL_NODE1),
     "machines.node1.disks: `drbd` storage needs a first extra disk of at least 20 GiB"),
    ("plain-without-disk", _cluster("", SMALL_NODE1),
     "machines.node1.disks: `plain` storage needs a first extra disk"),
    ("cluster-named-instance", toml(layouts='[layouts.main.inst1]\nnodes = ["node1"]\n'),
     "layouts.main.inst1: 'inst1' is reserved"),
    ("cluster-named-localhost", toml(layouts='[layouts.main.localhost]\nnodes = ["node1"]\n'),
     "layouts.main.localhost: 'localhost' is reserved"),
    ("cluster-named-machine", toml(layouts='[layouts.main.node2]\nnodes = ["node1"]\n'),
     "layouts.main.node2: a cluster cannot have the name of a machine"),
    ("cluster-double-dash", toml(layouts='[layouts.main.c--1]\nnodes = ["node1"]\n'),
     "layouts.main.c--1: name 'c--1' must not contain '--'"),
    ("layout-name", toml(layouts=LAYOUTS.replace("layouts.main", "layouts.Main")),
     "layouts.Main: name 'Main'"),
    ("cluster-twice", _cluster('[layouts.other.c1]\nnodes = ["node1"]\n'),
     "layouts.other.c1: duplicate cluster name (also in layouts.main)"),
    ("cluster-unknown-key", _cluster("node = []\n"), "layouts.main.c1.node: unknown key"),
    ("too-many-clusters", _cluster(MANY_CLUSTERS),
     "layouts: 51 clusters in all layouts do not fit the lab's address plan (at most 50"),
    # the file itself
    ("unknown-top-level-key", toml(extra="[layout.x.c9]\nnodes = []\n"), "layout: unknown key"),
    ("toml-syntax", toml(extra="[machines.node3\n"), "TOML syntax: "),
    ("not-utf8", toml().encode() + b"\n# caf\xe9\n", "not UTF-8 text: byte 0xe9 at line"),
    ("binary", b"\x7fELF\x02\x01\x01\x00\x00\x00", "not UTF-8 text: binary data"),
    ("utf16", toml().encode("utf-16"), "not UTF-8 text"),
]


@pytest.fixture
def cli_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The CLI's state directory (empty), a big host, and one route the host already has."""
    state = tmp_path / "cli-state"
    monkeypatch.setenv("GANETI_LAB_STATE", str(state))
    monkeypatch.setattr(topology, "host_memory", lambda: BIG_HOST)
    monkeypatch.setattr(leases, "_routes", lambda: [ROUTED])
    return state


def _created(state: Path) -> list[str]:
    return sorted(p.name for p in state.iterdir()) if state.exists() else []


def test_the_table_of_bad_topologies_is_big_and_distinct() -> None:
    assert len(BAD_TOPOLOGIES) >= 40
    assert len({case for case, _, _ in BAD_TOPOLOGIES}) == len(BAD_TOPOLOGIES)
    assert len({text for _, text, _ in BAD_TOPOLOGIES}) == len(BAD_TOPOLOGIES)


@pytest.mark.parametrize(("content", "expected"), [(t, e) for _, t, e in BAD_TOPOLOGIES],
                         ids=[case for case, _, _ in BAD_TOPOLOGIES])
def test_check_refuses_a_bad_topology(
    content: str | bytes, expected: str, cli_state: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "bad.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert out == ""
    assert err.startswith(f"error: invalid topology {path}: "), err
    assert err.rstrip().endswith("fix: correct the file; nothing was created"), err
    # One fault, one line: nothing that follows from it is reported besides.
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, err
    assert expected in problems[0], (expected, err)
    assert _created(cli_state) == [], "check must create nothing"


def test_check_of_a_directory(cli_state: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"topology {tmp_path} is a directory" in err and "fix: give the file itself" in err
    assert _created(cli_state) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_check_of_an_unreadable_file(cli_state: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(toml())
    path.chmod(0)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read topology {path}: Permission denied" in err
    assert _created(cli_state) == []


def test_load_reports_an_unreadable_file(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(toml())

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(LabError, match=r"cannot read topology .*lab.toml: Permission denied"):
        topology.load(path, host_memory_mib=BIG_HOST)


def test_check_of_a_missing_file(cli_state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "no/such/lab.toml"]) == 2
    assert "topology no/such/lab.toml not found" in capsys.readouterr().err
    assert _created(cli_state) == []


def test_error_text_is_never_read_as_markup(cli_state: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # "[/x]" is a closing tag to rich: printed as markup it made the error report crash.
    path = tmp_path / "markup.toml"
    path.write_text(toml(extra=SPARE.replace("node3", '"[/x]"')
                         + 'disks = ["[red]x[/red]", "[bold]"]\n'))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "name '[/x]' must be a DNS label" in err
    assert "not '[red]x[/red]'" in err and "not '[bold]'" in err


def test_load_reports_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(toml().encode() + '\n# Zürich\n'.encode("latin-1"))
    with pytest.raises(TopologyError) as info:
        topology.load(path, host_memory_mib=BIG_HOST)
    (problem,) = info.value.problems
    assert problem.startswith("not UTF-8 text: byte 0xfc at line "), problem
    assert str(path) in str(info.value)


def test_load_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + toml().encode())
    assert topology.load(path, host_memory_mib=BIG_HOST).name == "t"


@pytest.mark.parametrize("profile", ["default", "tiny", "tiny-uncached", "two-racks"])
def test_check_prints_the_plan_of_a_builtin_profile(
    profile: str, cli_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", profile]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    t = topology.load(profile, host_memory_mib=BIG_HOST)
    assert out.startswith(f"topology {t.source}: valid (lab {t.name!r})\n"), out
    lines = out.splitlines()
    for m in t.machines:
        disks = ", ".join(f"{d} GiB" for d in m.disks_gib) or "none"
        if m.disks_gib and m.disk_cache != "unsafe":
            disks += f" (cache {m.disk_cache})"
        assert any(line.split() == [m.name, m.role, str(m.cpus), "vCPU", str(m.memory_mib),
                                    "MiB", "disks:", *disks.split()] for line in lines), m
    assert "  mgmt  management  auto (leased at up)" in lines
    assert f"layouts (default: {t.default_layout}):" in lines
    for clusters in t.layouts.values():
        for c in clusters:
            assert (f"    {c.name}: nodes {', '.join(c.nodes)} (master {c.master}); disk "
                    f"templates {', '.join(c.disk_templates)}; hypervisors "
                    f"{', '.join(c.hypervisors)}; vg {c.vg_name}") in lines
    assert lines[-1].startswith("nothing was created")
    assert _created(cli_state) == []


def test_check_shows_explicit_subnets(cli_state: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(_net('subnet = "10.9.1.0/24"'))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  lab   cluster     10.9.1.0/24" in out.splitlines()
    assert "  mgmt  management  auto (leased at up)" in out.splitlines()
    assert _created(cli_state) == []


# Memory of running labs, routes of our own labs --------------------------------------------------


def _plan_file(state: Path, lab: str, text: str) -> None:
    path = state / "labs" / lab / "lab.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)


def _plan_json(memory: list[int], subnets: tuple[str, str] = ("10.201.0.0/24",
                                                              "10.201.1.0/24")) -> str:
    return json.dumps({"machines": [{"name": f"m{i}", "memory_mib": mib}
                                    for i, mib in enumerate(memory)],
                       "mgmt_subnet": subnets[0], "lab_subnet": subnets[1]})


def test_memory_in_use_sums_every_planned_lab(tmp_path: Path) -> None:
    state = tmp_path / "state"  # GANETI_LAB_STATE of every test here
    assert topology.memory_in_use_mib() == 0
    _plan_file(state, "one", _plan_json([768, 1536]))
    _plan_file(state, "two", _plan_json([512]))
    _plan_file(state, "corrupt", '{"machines": [')
    _plan_file(state, "odd", json.dumps({"machines": [{"memory_mib": "lots"}, 7, {}]}))
    _plan_file(state, "list", "[]")
    (state / "labs" / "empty").mkdir()
    assert topology.memory_in_use_mib() == 768 + 1536 + 512
    assert topology.memory_in_use_mib(exclude={"one"}) == 512


def test_memory_of_running_labs_counts_against_the_host() -> None:
    # 1280 MiB needed; 4000 - 1024 kept = 2976 free without other labs, 976 with 2000 in use.
    assert parse(toml(), "t.toml", host_memory_mib=4000, running_mib=0).memory_mib == 1280
    only(problems_with(toml(), host_memory_mib=4000, running_mib=2000), "machines",
         "need 1280 MiB", "2000 MiB used by labs already running", "destroy labs")


def test_check_counts_the_memory_of_running_labs(
    cli_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(topology, "host_memory", lambda: 4000)
    _plan_file(cli_state, "other", _plan_json([2000]))
    path = tmp_path / "lab.toml"
    path.write_text(toml())
    assert main(["check", str(path)]) == 2
    assert "2000 MiB used by labs already running" in capsys.readouterr().err


def test_routes_of_our_own_labs_do_not_block_their_subnets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A running lab with explicit subnets routes them; its own topology stays valid (which
    # lab holds a subnet is the lease book's business at `up`).
    networks = NETWORKS.replace('"management"', '"management"\nsubnet = "10.9.0.0/24"')
    networks = networks.replace('"cluster"', '"cluster"\nsubnet = "10.9.1.0/24"')
    monkeypatch.setattr(leases, "_routes", lambda: [ipaddress.IPv4Network("10.9.0.0/24"),
                                                    ipaddress.IPv4Network("10.9.1.0/24")])
    found = problems(toml(networks=networks))
    assert [p.split(": ")[0] for p in found] == ["networks.mgmt.subnet", "networks.lab.subnet"]
    assert "which this host already routes" in found[0]
    _plan_file(tmp_path / "state", "mine", _plan_json([512], ("10.9.0.0/24", "10.9.1.0/24")))
    parse(toml(networks=networks), "t.toml", host_memory_mib=BIG_HOST)


def problems_with(text: str, **kwargs: int) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse(text, "test.toml", **kwargs)
    return info.value.problems


def _key_paths() -> list[str]:
    """Every key of KEYS as it appears in a file (sections of a kind at one example)."""
    where = {"": "", "lab": "lab", "network": "networks.lab", "defaults": "defaults",
             "defaults.role": "defaults.hypervisor", "machine": "machines.node1",
             "cluster": "layouts.main.c1"}
    assert set(where) == set(topology.KEYS), "a new section of KEYS needs a place here"
    return [f"{where[section]}.{key}".lstrip(".") for section, keys in topology.KEYS.items()
            for key in sorted(keys)]


@pytest.mark.parametrize("key", _key_paths())
def test_every_key_of_the_wrong_type_is_one_clean_problem(key: str) -> None:
    tomli_w = pytest.importorskip("tomli_w")
    data = tomllib.loads(toml(extra="[defaults.hypervisor]\n[defaults.service]\n"))
    *parents, last = key.split(".")
    table = data
    for part in parents:
        table = table.setdefault(part, {})
    # Tables get a number, everything else a table: the wrong type for every key.
    table[last] = 5 if isinstance(table.get(last), dict) else {"x": 1}
    found = problems(tomli_w.dumps(data))
    assert len(found) == 1, found
    assert found[0].startswith(f"{key}: "), found


def test_a_cluster_names_its_ganeti_version() -> None:
    t = topology.load("default", host_memory_mib=BIG_HOST)
    one, two = t.layout("one-cluster"), t.layout("two-clusters")
    assert [c.version for c in one] == ["3.0"]
    assert {c.name: c.version for c in two} == {"rack1": "3.0", "rack2": "3.1"}
    plan = spec.plan(t, "v", SUBNETS, Path("/k"), Path("/c"), "qemu", "custom")
    assert [c.version for c in plan.layouts["two-clusters"]] == ["3.0", "3.1"]
