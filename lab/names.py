"""The one rule for names a user gives (labs, machines, networks, layouts, clusters).

A lab name becomes a directory under the state directory and part of every libvirt object the
lab owns (``glab-<lab>--<machine>``), so it must be a plain DNS label that cannot climb out of
a directory, and it must never contain ``--``: the first ``--`` after ``glab-`` ends the lab
name, which is what lets one lab's objects be told apart from another's (``x`` vs ``x-2``).
"""

from __future__ import annotations

import re

from lab.errors import LabError

NAME_RE = re.compile(r"\A(?=[a-z0-9-]{1,31}\Z)[a-z](?:-?[a-z0-9])*\Z")
NAME_RULE = ("a lowercase letter first, then lowercase letters, digits or single '-' between "
             "them, at most 31 characters")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a lab (or a machine, network, layout or cluster), or None."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if NAME_RE.match(name):
        return None
    if re.fullmatch(r"[a-z][a-z0-9-]{0,30}", name):
        # Only the '-' placement is wrong: say which rule, the generic text would not show it.
        if name.endswith("-"):
            return f"name {name!r} must not end with '-'"
        return (f"name {name!r} must not contain '--' (it separates the lab from the machine "
                "in libvirt object names)")
    return f"name {name!r} must be a DNS label: {NAME_RULE}"


def validate_lab_name(name: object) -> str:
    """``name`` if it can name a lab; else a LabError that says what to change."""
    problem = name_problem(name)
    if problem is not None:
        raise LabError(f"invalid lab name: {problem}",
                       f"choose a name with {NAME_RULE}, e.g. 'mylab' or 'ci-2'")
    assert isinstance(name, str)
    return name
