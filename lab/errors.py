"""Error types shared by every layer. Each names the thing that failed and how to fix it."""

from __future__ import annotations


class LabError(Exception):
    """A harness error (as opposed to a failed assertion in a scenario).

    ``hint`` tells the user what to do about it; it is appended to the message.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(f"{message}\n  fix: {hint}" if hint else message)


class HarnessError(LabError):
    """The lab itself broke: a machine did not boot or answer, libvirt, Vagrant or SSH failed.
    A test that meets one could not run: pytest shows it as an error, the report as "error"."""


class GanetiFailure(LabError):
    """The system under test failed: Ganeti refused a command, a job failed, a cluster is not
    healthy, data differs. A test that meets one failed."""


def raise_failures(failed: dict[str, BaseException], total: int, what: str, hint: str,
                   error: type[LabError] = LabError) -> None:
    """Raise for the workers of one parallel step that failed, named by ``failed``'s keys: a
    single failure as it is, several as one ``error`` with a line each (``what``: "machines",
    "clusters of layout x"). Nothing failed: return."""
    if len(failed) == 1:
        raise next(iter(failed.values()))
    if failed:
        raise error(f"{len(failed)} of {total} {what} failed:\n"
                    + "\n".join(f"  {name}: {_first_line(exc)}" for name, exc in failed.items()),
                    hint)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else repr(exc)


class CommandFailed(LabError):
    """A command on the host or on a lab machine exited non-zero (or timed out)."""

    def __init__(
        self,
        where: str,
        command: str,
        returncode: int | None,
        output_tail: str,
        hint: str | None = None,
    ) -> None:
        self.where = where
        self.command = command
        self.returncode = returncode
        self.output_tail = output_tail
        status = "timed out" if returncode is None else f"exited {returncode}"
        tail = "\n".join("    " + line for line in output_tail.splitlines())
        super().__init__(f"{where}: `{command}` {status}; output tail:\n{tail}", hint)
