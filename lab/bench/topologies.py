"""Topologies with N hypervisors, for the benchmark's scaling section."""

from __future__ import annotations

import tomllib

import tomli_w

SCALE_SIZES = (2, 4, 6)
SCALE_MEMORY_MIB = 1024
SCALE_LAYOUT = "scale"


def scaling_topology_text(base_text: str, hypervisors: int,
                          memory_mib: int = SCALE_MEMORY_MIB,
                          layout: str = SCALE_LAYOUT) -> str:
    """The topology ``base_text`` (TOML) with its service box and ``hypervisors`` hypervisors
    node1..nodeN of ``memory_mib`` each, and one layout: one cluster of all of them."""
    if hypervisors < 1:
        raise ValueError(f"a lab needs at least one hypervisor, not {hypervisors}")
    data = tomllib.loads(base_text)
    services = {name: spec for name, spec in data.get("machines", {}).items()
                if isinstance(spec, dict) and spec.get("role") == "service"}
    nodes = [f"node{i}" for i in range(1, hypervisors + 1)]
    data["machines"] = {**services,
                        **{n: {"role": "hypervisor", "memory": memory_mib} for n in nodes}}
    data["layouts"] = {layout: {"cluster1": {"nodes": nodes}}}
    lab = dict(data.get("lab", {}))
    lab["name"] = f"scale-{hypervisors}"
    lab["default_layout"] = layout
    lab["description"] = (f"benchmark: 1 service box + {hypervisors} hypervisors "
                          f"({memory_mib} MiB each), one cluster of all of them")
    data["lab"] = lab
    return tomli_w.dumps(data)
