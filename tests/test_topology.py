"""Tests for lab.topology (profiles, validation) and lab.spec (addressing of a planned lab)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from lab import spec, topology
from lab.errors import LabError
from lab.topology import TopologyError, parse

# Plenty of host memory, so only the tests about memory see the host check.
BIG_HOST = 1_000_000

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
         "unknown key", "did you mean 'memory'?", "allowed: cpus, disks, memory, role")


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
        "layouts.main.c1.disk_templates: unknown: rbd",
        "layouts.main.c1.hypervisors: choose from fake, kvm",
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
    assert plan.prefix == "glab-demo-"
    assert [m.domain for m in plan.machines] == [
        "glab-demo-service", "glab-demo-node1", "glab-demo-node2", "glab-demo-node3",
        "glab-demo-node4",
    ]
    assert [m.fqdn for m in plan.machines][:2] == ["service.lab", "node1.lab"]
    assert (plan.mgmt_subnet, plan.lab_subnet) == ("10.201.3.0/24", "10.201.4.0/24")
    assert (plan.mgmt_network, plan.lab_network) == ("glab-demo-mgmt", "glab-demo-lab")
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
