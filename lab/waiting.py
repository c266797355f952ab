"""One way to wait for something in a lab: SSH answering, a command succeeding, RAPI up, a
cluster healthy, a job final, a console showing host keys.

``wait_for`` polls a probe with a growing pause (tenacity), bounded by a timeout; it says at
the start what it waits for and how long it may take (so a hung run shows where it hangs), and
when it gives up it says what it saw last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_result,
    stop_after_delay,
    wait_exponential,
)

from lab.errors import LabError

T = TypeVar("T")
log = logging.getLogger("lab.waiting")


class WaitTimeout(LabError):
    """What was waited for did not happen in time; ``last`` is what the last attempt saw."""

    def __init__(self, what: str, timeout: float, last: str, hint: str | None = None) -> None:
        self.what, self.timeout, self.last = what, timeout, last
        super().__init__(f"timed out after {timeout:.0f} s waiting for {what}; last saw: {last}",
                         hint)


def wait_for(what: str, probe: Callable[[], T | None], *, timeout: float,
             interval: float = 2.0, first_pause: float = 0.25,
             describe: Callable[[], str] | None = None,
             retry_on: tuple[type[BaseException], ...] = (LabError,),
             interrupt: Callable[[], None] | None = None,
             sleep: Callable[[float], object] = time.sleep,
             announce: bool = True) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    - Pauses start at ``first_pause`` seconds and double up to ``interval``; the last pause
      is cut so that the last attempt runs at ``timeout``, and none after it (the first one
      always runs).
    - An exception of ``retry_on`` counts as "not yet" (and as what was seen); any other
      exception ends the wait at once, as does one raised by ``interrupt`` (called before
      every attempt, e.g. to honour Ctrl-C).
    - ``sleep`` pauses (an Event's ``wait`` ends a pause early when it is set).
    - On timeout: WaitTimeout, ending with ``describe()`` or the last value or exception.
    """
    if announce:
        log.info("waiting up to %.0f s for %s", timeout, what)
    last: list[object] = ["no attempt"]

    def attempt() -> T | None:
        if interrupt is not None:
            interrupt()
        try:
            value = probe()
        except retry_on as exc:
            last[0] = exc
            return None
        last[0] = value
        return value

    backoff = wait_exponential(multiplier=first_pause, min=first_pause, max=interval)

    def pause(state: RetryCallState) -> float:
        return max(0.0, min(backoff(state), timeout - (state.seconds_since_start or 0.0)))

    retrying = Retrying(stop=stop_after_delay(timeout), wait=pause,
                        retry=retry_if_result(lambda value: not value), sleep=sleep)
    try:
        return retrying(attempt)  # type: ignore[return-value]  # truthy: a T
    except RetryError:
        seen = describe() if describe is not None else _seen(last[0])
        raise WaitTimeout(what, timeout, seen) from None


def _seen(value: object) -> str:
    if isinstance(value, BaseException):
        text = str(value).splitlines()
        return f"{type(value).__name__}: {text[0] if text else ''}"
    return repr(value)
