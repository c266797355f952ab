"""The session's lab for real (any topology: `--lab-topology tiny` works too): every machine
answers with its own identity, a whole-lab snapshot undoes a change on every machine, power
verbs leave the lab as it was. (The session's teardown destroys the lab and fails if any
libvirt object is left.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from lab import agent, power, rest, snapshots, virt
from lab.lab import Lab
from lab.leases import LeaseBook
from lab.remote import Machine


def _volume_groups(lab: Lab) -> set[str]:
    return {c.vg_name for clusters in lab.plan.layouts.values() for c in clusters
            if "plain" in c.disk_templates or "drbd" in c.disk_templates}


def test_every_machine_runs_commands(lab: Lab) -> None:
    names = lab.on_all(lambda m: m.succeed("hostname").strip())
    assert names == {m.name: m.name for m in lab.plan.machines}
    # Per-machine identity made at first boot, never baked: host keys and machine-id differ.
    host_keys = lab.on_all(lambda m: m.succeed("cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1])
    assert len(set(host_keys.values())) == len(host_keys)
    machine_ids = lab.on_all(lambda m: m.succeed("cat /etc/machine-id").strip())
    assert len(set(machine_ids.values())) == len(machine_ids)
    # Login is the lab's own key only (Vagrant's public insecure key is never accepted).
    auth = lab.on_all(lambda m: m.succeed("cat /root/.ssh/authorized_keys"))
    public = (lab.dir / "id_ed25519.pub").read_text().split()[1]
    for text in auth.values():
        assert public in text
        assert "vagrant insecure public key" not in text


def test_lab_network_names_and_storage(lab: Lab) -> None:
    service = lab.plan.service
    for m in lab.hypervisors:
        # Cluster network: static address on br0, names resolve, service box reachable.
        assert lab.plan.machine(m.name).lab_ip in m.succeed("ip -4 -o addr show br0")
        m.succeed(f"ping -c1 -W5 {service.fqdn}")
        assert _volume_groups(lab) <= set(m.succeed("vgs --noheadings -o vg_name").split())
        m.succeed("mountpoint -q /srv/ganeti/shared-file-storage")
    # The service box answers DNS for lab names (dnsmasq on the cluster network).
    out = lab.hypervisors[0].succeed(
        "python3 -c \"import socket; print(socket.gethostbyname('inst7.lab'))\"")
    assert out.strip() == lab.plan.instance_names["inst7"]
    assert "Packages" in lab.service.succeed("curl -sf http://127.0.0.1/ | head -c 2000")


def _ssh_clock_skews(lab: Lab) -> dict[str, float]:
    """Each guest's clock against the host's, read over SSH (the round trip bounds the error)."""
    def skew(m: Machine) -> float:
        m.succeed("true")  # connected first: a handshake after a restore takes seconds
        before = time.time()
        guest = float(m.succeed("date +%s.%N"))
        return abs(guest - (before + time.time()) / 2)
    return lab.on_all(skew)


def test_every_machine_answers_through_its_guest_agent(lab: Lab) -> None:
    with agent.agents(lab.plan) as found:
        assert all(found.values()), f"machines without the agent's channel: {found}"
        for name, guest in found.items():
            assert guest is not None
            ran = guest.run(["/bin/uname", "-n"])
            assert ran.ok and ran.stdout.strip() == name
            assert guest.read("/etc/hostname") == f"{name}\n".encode()
            assert guest.read("/nonexistent/lab-file") is None
            failed = guest.run(["/bin/sh", "-c", "echo oops >&2; exit 3"])
            assert (failed.exit_status, failed.stderr) == (3, "oops\n")


def test_snapshot_restore_undoes_changes_on_every_machine(lab: Lab) -> None:
    snap = snapshots.save(lab, "lifecycle-test")
    try:
        assert "lifecycle-test" in [s.name for s in snapshots.list_snapshots(lab)]
        lab.on_all(lambda m: m.succeed("echo changed > /root/after-snapshot && sync"))
        done = snapshots.restore(lab, snap.name)
        # Where the restore's time went is measured, not assumed (the bench reads it).
        assert done.snapshot.name == snap.name
        assert done.revert_seconds > 0 and done.answer_seconds > 0
        # Every machine answered and had its clock set through its guest agent, no SSH.
        assert done.reached == {m.name: "agent" for m in lab.plan.machines}
        left = lab.on_all(lambda m: m.run("test -e /root/after-snapshot").ok)
        assert not any(left.values()), f"change survived the restore on {left}"
        # Clocks were resynchronised: the guests do not live in the snapshot's past.
        with agent.agents(lab.plan) as found:
            exact = {n: abs(g.clock_skew()) for n, g in found.items() if g is not None}
        assert max(exact.values()) < 1.0, exact
        assert max(_ssh_clock_skews(lab).values()) < 2.0
    finally:
        snapshots.delete(lab, "lifecycle-test")
    assert "lifecycle-test" not in [s.name for s in snapshots.list_snapshots(lab)]


def test_a_lab_at_rest_wakes_at_its_state_without_a_boot(lab: Lab) -> None:
    # Another process may not put a lab to rest that this session owns.
    refused = subprocess.run([sys.executable, "-m", "lab.cli", "down", "--name", lab.name],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and f"is in use by process {os.getpid()}" in refused.stderr
    assert all(s == "running" for s in virt.domain_states(lab.plan).values())

    lab.on_all(lambda m: m.succeed("echo before-rest > /root/rest-marker"))
    boot_ids = lab.on_all(lambda m: m.succeed("cat /proc/sys/kernel/random/boot_id").strip())
    try:
        rest.put_to_rest(lab)
        assert rest.at_rest(lab) == rest.AT_REST
        assert set(virt.domain_states(lab.plan).values()) == {"shut off"}  # memory freed
        woke = rest.wake(lab)
    finally:
        LeaseBook().set_owner(lab.name, os.getpid())  # the session owns its lab again
    assert rest.at_rest(lab) is None
    assert set(virt.domain_states(lab.plan).values()) == {"running"}
    # Machines started by libvirt from the snapshot answer through their agents too.
    assert woke.reached == {m.name: "agent" for m in lab.plan.machines}
    # The same running systems, not a boot: same boot id, the marker written before is there.
    assert lab.on_all(lambda m: m.succeed("cat /proc/sys/kernel/random/boot_id").strip()) \
        == boot_ids
    assert set(lab.on_all(lambda m: m.succeed("cat /root/rest-marker").strip()).values()) \
        == {"before-rest"}
    assert max(_ssh_clock_skews(lab).values()) < 2.0
    lab.on_all(lambda m: m.succeed("rm /root/rest-marker"))
    snapshots.delete(lab, rest.AT_REST)


def test_a_command_that_times_out_is_ended_on_the_machine_too(lab: Lab) -> None:
    node = lab.hypervisors[0]
    result = node.run("sleep 613", timeout=2)
    assert result.exit_status is None  # we stopped waiting
    # ... and the machine ends it shortly after, instead of leaving it behind a closed channel.
    node.wait_until_succeeds("! pgrep -f '^sleep 613$'", timeout=60)
    assert node.succeed("echo still fine").strip() == "still fine"


def test_power_verbs_and_the_cluster_link(lab: Lab) -> None:
    """An operator's verbs on machines; the lab is as it was afterwards (same identity,
    storage and mounts), so the tests after this one see no difference."""
    node = lab.hypervisors[-1]
    name = node.name
    peer: Machine = lab.hypervisors[0] if len(lab.hypervisors) > 1 else lab.service
    address = lab.plan.machine(name).lab_ip

    power.cut_link(lab, name)
    assert power.link_state(lab, name) == "down"
    peer.fail(f"ping -c1 -W2 {address}")
    assert node.succeed("hostname").strip() == name  # the management link still answers
    power.restore_link(lab, name)
    assert power.link_state(lab, name) == "up"
    peer.wait_until_succeeds(f"ping -c1 -W2 {address}", timeout=60)

    # One verb per machine, side by side: a single guest's boot uses one of the host's two
    # cores, so three at once took 169-198 s against 234-338 s one after the other.
    def boot_id(machine: str) -> str:
        return lab.machine(machine).succeed("cat /proc/sys/kernel/random/boot_id").strip()

    def rebooted(machine: str) -> None:
        power.reboot(lab, machine)

    def powered_off_and_started(machine: str) -> None:
        power.power_off(lab, machine)
        assert power.state(lab, machine) == "shut off"
        power.start(lab, machine)

    def shut_down_and_started(machine: str) -> None:
        power.shutdown(lab, machine)
        assert power.state(lab, machine) == "shut off"
        power.start(lab, machine)

    # The last three hypervisors get a verb each (node4, node3, node2 in the default lab); a
    # smaller lab's machines take several, one after the other.
    verbs = (rebooted, powered_off_and_started, shut_down_and_started)
    targets = [m.name for m in reversed(lab.hypervisors[1:] or lab.hypervisors)][:len(verbs)]
    plan: dict[str, list[Callable[[str], None]]] = {m: [] for m in targets}
    for i, verb in enumerate(verbs):
        plan[targets[i % len(targets)]].append(verb)

    def run_verbs(machine: str) -> None:
        for verb in plan[machine]:
            before = boot_id(machine)
            verb(machine)
            assert boot_id(machine) != before, (machine, verb.__name__)

    with ThreadPoolExecutor(len(plan)) as pool:
        for future in [pool.submit(run_verbs, machine) for machine in plan]:
            future.result()
    # What settle made survives a cold start: storage, the shared mount, names.
    for machine in plan:
        moved = lab.machine(machine)
        assert _volume_groups(lab) <= set(moved.succeed("vgs --noheadings -o vg_name").split())
        moved.wait_until_succeeds("mountpoint -q /srv/ganeti/shared-file-storage",
                                  timeout=120)
        peer.wait_until_succeeds(f"ping -c1 -W2 {machine}.lab", timeout=60)
    snapshots.resync_clocks(lab)
