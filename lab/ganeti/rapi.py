"""Small typed client for Ganeti's Remote API v2 (Ganeti 3.0/3.1).

HTTPS only, verified against a pinned CA/certificate file, HTTP basic auth.
Mutating calls return a :class:`Job`; ``Job.wait()`` polls until it finishes.

A failed call never carries the credentials: transport errors are re-raised as
:class:`RapiError` without the requests/urllib3 exception chain (whose frames hold the request
headers, which pytest prints as frame arguments and, with ``-l``, locals), the Authorization
header value hides itself from ``repr``, and the password is registered with
:mod:`lab.secrets` so whatever a run writes is scrubbed of it.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import requests.auth
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from lab import secrets as lab_secrets
from lab.errors import GanetiFailure, HarnessError
from lab.waiting import WaitTimeout, wait_for

log = logging.getLogger("lab.rapi")

TAG_KINDS: dict[str, str | None] = {
    "cluster": None, "node": "nodes", "instance": "instances",
    "group": "groups", "network": "networks",
}
NODE_ROLES = ("drained", "master-candidate", "offline", "regular")
JOB_FINAL = ("success", "error", "canceled")
_MAX_POLL = 5.0
_LOG_TAIL = 10


class RapiError(GanetiFailure):
    """A RAPI call failed; ``status`` is None when no HTTP answer was received.

    ``where`` names the RAPI endpoint (``cluster NAME (host:port)`` or ``host:port``).
    """

    def __init__(self, method: str, path: str, status: int | None, message: str, *,
                 where: str | None = None) -> None:
        self.method, self.path, self.status, self.message = method, path, status, message
        self.where = where
        got = f"HTTP {status}" if status is not None else "no HTTP response"
        on = f" on {where}" if where else ""
        super().__init__(f"RAPI {method} {path}{on} failed ({got}): {message}")


class RapiUnreachable(RapiError, HarnessError):
    """No connection to the RAPI daemon could be made."""


class RapiAuthError(RapiError, HarnessError):
    """401/403: wrong credentials or a user without ``write`` access."""


class JobError(GanetiFailure):
    """Base for job outcomes other than success."""


class JobFailed(JobError):
    """A job ended in ``error`` or ``canceled``."""

    def __init__(self, job_id: int, status: str, opresult: list[Any],
                 oplog_tail: list[str], summary: list[str]) -> None:
        self.job_id, self.status, self.opresult = job_id, status, opresult
        self.oplog_tail, self.summary = oplog_tail, summary
        errors = [format_op_error(r) for r in opresult or [] if _is_encoded_error(r)]
        lines = [f"Ganeti job {job_id} ({', '.join(summary) or 'no summary'}) "
                 f"ended with status {status!r}"]
        lines += [f"  error: {e}" for e in errors] or ["  no op error recorded"]
        if oplog_tail:
            lines.append("  last job log lines:")
            lines += [f"    {entry}" for entry in oplog_tail]
        super().__init__("\n".join(lines))


class JobTimeout(JobError):
    """``Job.wait`` gave up; the job itself keeps running on the cluster."""

    def __init__(self, job_id: int, status: str | None, waited: float) -> None:
        self.job_id, self.status, self.waited = job_id, status, waited
        super().__init__(
            f"Ganeti job {job_id} still {status!r} after waiting {waited:.1f}s; it is still "
            f"running on the cluster (keep waiting, or cancel it: gnt-job cancel {job_id})")


class _Masked(str):
    """A header value that ``repr`` (pytest's frame arguments and ``-l`` locals, dict reprs)
    shows as ``'***'``; ``str`` and the bytes sent stay the real value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


class _BasicAuth(requests.auth.AuthBase):
    """HTTP Basic auth whose header is built once and masked in reprs; nothing of it shows
    when the auth object or a header dict is printed."""

    __slots__ = ("_header",)

    def __init__(self, username: str, password: str) -> None:
        # latin-1 first, as requests' own HTTPBasicAuth does (same bytes on the wire); utf-8
        # for what latin-1 cannot encode, as RFC 7617 suggests.
        raw = f"{username}:{password}"
        try:
            encoded = raw.encode("latin-1")
        except UnicodeEncodeError:
            encoded = raw.encode("utf-8")
        self._header = _Masked("Basic " + base64.b64encode(encoded).decode("ascii"))

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self._header
        return r

    def __repr__(self) -> str:
        return "<RAPI basic auth ***>"


# urllib3 names its connection object in messages ("<...HTTPSConnection object at 0x..>: ").
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>:?\s*")


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error as one short line, e.g.
    ``ConnectionRefusedError: [Errno 111] Connection refused``; never any request header."""
    current, seen = exc, set()
    while id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "reason", None)  # urllib3's MaxRetryError and friends
        if not isinstance(inner, BaseException):
            inner = next((a for a in current.args if isinstance(a, BaseException)), None)
        if inner is None:
            inner = current.__cause__ or current.__context__
        if inner is None:
            break
        current = inner
    text = _OBJECT_REPR.sub("", str(current)).strip() or "no detail"
    return lab_secrets.scrub(f"{type(current).__name__}: {text.splitlines()[0]}")


def _is_encoded_error(result: Any) -> bool:
    # Ganeti serialises a failed opcode's exception as [class name, [args...]].
    return (isinstance(result, list) and len(result) == 2
            and isinstance(result[0], str) and isinstance(result[1], list))


def format_op_error(result: Any) -> str:
    """Render ``["OpPrereqError", ["msg", "ECODE"]]`` as ``OpPrereqError: msg (ECODE)``."""
    if not _is_encoded_error(result):
        return str(result)
    name, args = result
    if not args:
        return name
    text = f"{name}: {args[0]}"
    rest = [str(a) for a in args[1:] if a not in (None, "")]
    return f"{text} ({', '.join(rest)})" if rest else text


def job_timestamp(value: Any) -> float | None:
    """Ganeti timestamps are ``[secs, usecs]``."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return value[0] + value[1] / 1e6
    return None


def _oplog_tail(oplog: Any, count: int = _LOG_TAIL) -> list[str]:
    """Flatten the per-op log (entries ``[serial, [s, us], type, msg]``), keep the last lines."""
    lines: list[str] = []
    for op_entries in oplog or []:
        for entry in op_entries or []:
            if isinstance(entry, list) and len(entry) >= 4:
                stamp = job_timestamp(entry[1])
                when = time.strftime("%H:%M:%S", time.gmtime(stamp)) if stamp else "--:--:--"
                lines.append(f"{when} {entry[3]}")
            else:
                lines.append(str(entry))
    return lines[-count:]


@dataclass
class Job:
    """A submitted Ganeti job plus the timing data scenarios need for throughput."""

    id: int
    client: RapiClient = field(repr=False, compare=False)
    submitted_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    run_seconds: float | None = None
    queue_seconds: float | None = None
    last_status: str | None = None
    summary: list[str] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        """Current job record (GET /2/jobs/ID); also updates the timing fields."""
        info = self.client.job_status(self.id)
        self.last_status = info.get("status")
        self.summary = list(info.get("summary") or self.summary)
        start, end, received = (job_timestamp(info.get(k))
                                for k in ("start_ts", "end_ts", "received_ts"))
        if start is not None and end is not None:
            self.run_seconds = end - start
        if start is not None and received is not None:
            self.queue_seconds = start - received
        return info

    def wait_for_final(self, timeout: float = 600) -> dict[str, Any]:
        """Block until the job is final through RAPI's long poll (``/2/jobs/ID/wait``): the
        master answers as soon as the job's status changes, or after its own short timeout
        with no change. Returns the final job record (failed jobs too; they are not raised).
        Needs a RAPI user with write access, as Ganeti requires for this call."""
        began = time.monotonic()
        seen: list[Any] | None = None
        while True:
            change = self.client.wait_for_job_change(self.id, ["status"], seen)
            if change:
                seen = list(change.get("job_info") or [])
            if seen and seen[0] in JOB_FINAL:
                info = self.status()
                self.finished_at = time.time()
                return info
            waited = time.monotonic() - began
            if waited >= timeout:
                self.status()
                raise JobTimeout(self.id, self.last_status, waited)

    def wait(self, timeout: float = 600, poll: float = 1.0) -> list[Any]:
        """Poll until the job is final; return ``opresult`` or raise JobFailed/JobTimeout."""
        began = time.monotonic()

        def final() -> dict[str, Any] | None:
            info = self.status()  # checked at once: short jobs must not pay a pause
            return info if self.last_status in JOB_FINAL else None

        try:
            info = wait_for(f"Ganeti job {self.id}", final, timeout=timeout, first_pause=poll,
                            interval=max(poll, _MAX_POLL), retry_on=(), announce=False)
        except WaitTimeout:
            raise JobTimeout(self.id, self.last_status, time.monotonic() - began) from None
        self.finished_at = time.time()
        log.debug("job %s %s (run %s s)", self.id, self.last_status, self.run_seconds)
        if self.last_status == "success":
            return list(info.get("opresult") or [])
        raise JobFailed(self.id, str(self.last_status), info.get("opresult") or [],
                        _oplog_tail(info.get("oplog")), self.summary)


def instance_creation(name: str, *, disk_template: str, disks: list[dict[str, Any]],
                      nics: list[dict[str, Any]] | None = None, os: str | None = None,
                      pnode: str | None = None, snode: str | None = None,
                      iallocator: str | None = None, hypervisor: str | None = None,
                      beparams: dict[str, Any] | None = None,
                      hvparams: dict[str, Any] | None = None,
                      osparams: dict[str, Any] | None = None, start: bool = True,
                      ip_check: bool = False, name_check: bool = False,
                      conflicts_check: bool = True, wait_for_sync: bool = True,
                      **extra: Any) -> dict[str, Any]:
    """The fields of one instance creation, as /2/instances and each entry of
    /2/instances-multi-alloc take them."""
    # The checks are always sent: Ganeti defaults ip/name_check to True, which a lab without
    # DNS for its instances cannot pass.
    fields: dict[str, Any] = {
        "mode": "create", "name": name, "disk_template": disk_template, "disks": disks,
        "nics": nics if nics is not None else [{}],
        "start": start, "ip_check": ip_check, "name_check": name_check,
        "conflicts_check": conflicts_check, "wait_for_sync": wait_for_sync,
    }
    optional = dict(os=os, pnode=pnode, snode=snode, iallocator=iallocator,
                    hypervisor=hypervisor, beparams=beparams, hvparams=hvparams,
                    osparams=osparams, **extra)
    fields.update({k: v for k, v in optional.items() if v is not None})
    return fields


class RapiClient:
    """Client for one cluster's RAPI at ``https://host:port``; ``cluster`` (the cluster's name)
    is named in every error."""

    def __init__(self, host: str, port: int = 5080, *, username: str, password: str,
                 ca_file: str | Path, timeout: float = 60.0, get_attempts: int = 3,
                 cluster: str | None = None) -> None:
        self.host, self.port, self.username, self.cluster = host, port, username, cluster
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.where = f"cluster {cluster} ({endpoint})" if cluster else endpoint
        # Before anything can fail: whatever a failure prints is scrubbed of these.
        lab_secrets.register(password, f"rapi password {cluster or host}", user=username)
        self.ca_file = Path(ca_file)
        if not self.ca_file.is_file():
            raise FileNotFoundError(f"RAPI CA/certificate file not found: {self.ca_file}")
        self.timeout = timeout
        self.get_attempts = max(1, get_attempts)
        self._base = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        self._session = requests.Session()
        # trust_env off: REQUESTS_CA_BUNDLE would silently replace the pinned CA and a
        # proxy from the environment has no business between us and a lab network.
        self._session.trust_env = False
        # An auth object, not a (user, password) tuple: the tuple would be visible wherever
        # the session's settings are printed, and its header would not be masked.
        self._session.auth = _BasicAuth(username, password)
        self._session.headers.update({"Accept": "application/json",
                                      "User-Agent": "ganeti-lab-rapi"})

    def __repr__(self) -> str:
        cluster = f"cluster={self.cluster!r}, " if self.cluster else ""
        return (f"RapiClient({cluster}host={self.host!r}, port={self.port}, "
                f"username={self.username!r}, ca_file={str(self.ca_file)!r})")

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RapiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------

    def _request(self, method: str, path: str, query: list[tuple[str, Any]] | None = None,
                 body: Any = None, *, retry: bool | None = None) -> Any:
        """Send one call; GETs (unless ``retry=False``) retry on connection errors."""
        if retry is None:
            retry = method == "GET"
        if not retry:  # never repeat writes: a lost answer may hide a submitted job
            return self._send(method, path, query, body)
        retrying = Retrying(
            stop=stop_after_attempt(self.get_attempts),
            wait=wait_exponential(multiplier=0.25, min=0.25, max=2),
            retry=retry_if_exception_type(RapiUnreachable),
            before_sleep=lambda rs: log.debug("retrying %s %s after: %s", method, path,
                                              rs.outcome.exception() if rs.outcome else "?"),
            reraise=True)
        return retrying(self._send, method, path, query, body)

    def _send(self, method: str, path: str, query: list[tuple[str, Any]] | None,
              body: Any) -> Any:
        # None/False mean "Ganeti's default" (0 for every boolean query flag): drop them.
        params = [(k, int(v) if isinstance(v, bool) else v)
                  for k, v in query or [] if v is not None and v is not False]
        headers = {}
        data = None
        if body is not None:
            # ganeti-rapi rejects bodies whose Content-Type is not exactly application/json
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        resp, failure = self._transport(method, path, params, data, headers)
        if failure is not None:
            # Raised here, after the except blocks: the exception has no cause or context, so
            # its traceback starts in this frame and never shows the HTTP library's frames,
            # whose arguments and locals hold the auth header.
            log.debug("%s %s -> %s after %.3fs", method, path, type(failure).__name__,
                      time.monotonic() - started)
            raise failure from None
        assert resp is not None
        log.debug("%s %s -> %s in %.3fs", method, resp.request.path_url, resp.status_code,
                  time.monotonic() - started)
        invalid_json = False
        try:
            content = resp.json() if resp.content else None
        except ValueError:
            content = resp.text.strip()[:500]
            invalid_json = resp.ok
        if invalid_json:  # outside the except block, for the same reason as above
            raise RapiError(method, path, resp.status_code,
                            f"invalid JSON answer: {content!r}", where=self.where) from None
        if resp.ok:
            return content
        if isinstance(content, dict) and "message" in content:
            detail = f"{content.get('code', resp.status_code)} {content.get('message')}"
            if content.get("explain"):
                detail += f": {content['explain']}"
        else:
            detail = str(content or resp.reason)
        if resp.status_code in (401, 403):
            raise RapiAuthError(method, path, resp.status_code,
                                f"{detail}. Check the RAPI user {self.username!r} and its "
                                f"password in rapi_users, and that it has the 'write' "
                                f"option for modifying calls", where=self.where)
        raise RapiError(method, path, resp.status_code, detail, where=self.where)

    def _transport(self, method: str, path: str, params: list[tuple[str, Any]],
                   data: str | None, headers: dict[str, str]
                   ) -> tuple[requests.Response | None, RapiError | None]:
        """One HTTP exchange: the response, or the RapiError to raise (built here, raised by
        the caller outside any except block). ``headers`` holds only Content-Type: the auth
        header is added by the session, deep in frames that never reach a traceback."""
        try:
            return self._session.request(method, self._base + path, params=params or None,
                                         data=data, headers=headers, timeout=self.timeout,
                                         verify=str(self.ca_file)), None
        except requests.exceptions.SSLError as exc:
            return None, RapiError(
                method, path, None,
                f"TLS verification of {self.host}:{self.port} against {self.ca_file} failed "
                f"({_reason(exc)}). Is that file the cluster's current RAPI certificate and "
                f"does it name {self.host!r} as a SAN?", where=self.where)
        except requests.exceptions.ConnectionError as exc:  # includes ConnectTimeout
            return None, RapiUnreachable(
                method, path, None,
                f"cannot talk to Ganeti RAPI at {self.host}:{self.port} ({_reason(exc)}). "
                f"Check that the cluster IP is up on the master and that ganeti-rapi listens "
                f"on the cluster IP (not only on loopback) port {self.port}", where=self.where)
        except requests.exceptions.Timeout as exc:
            return None, RapiError(
                method, path, None,
                f"no answer within {self.timeout}s; the call may still have taken effect "
                f"({_reason(exc)})", where=self.where)
        except Exception as exc:  # anything else from requests/urllib3: same rule, no chain
            return None, RapiError(method, path, None,
                                   f"request to {self.host}:{self.port} failed "
                                   f"({_reason(exc)})", where=self.where)

    def status_of(self, method: str, path: str, body: str | None = None,
                  content_type: str | None = "application/json",
                  authenticated: bool = True) -> int:
        """The HTTP status RAPI answers a request with, whatever it is: for proving access
        control (401, 403, 415) without the client's own error handling. ``body`` is sent as
        is, under ``content_type`` (None: no Content-Type header at all)."""
        headers = {"Content-Type": content_type} if content_type else {}
        if authenticated:
            resp, failure = self._transport(method, path, [], body, headers)
        else:
            try:
                with requests.Session() as anonymous:
                    anonymous.trust_env = False  # as the client's own session
                    resp, failure = anonymous.request(
                        method, self._base + path, data=body, headers=headers,
                        timeout=self.timeout, verify=str(self.ca_file)), None
            except requests.exceptions.RequestException as exc:
                resp, failure = None, RapiError(method, path, None, _reason(exc),
                                                where=self.where)
        if failure is not None:
            raise failure from None
        assert resp is not None
        return resp.status_code

    def _submit(self, method: str, path: str, query: list[tuple[str, Any]] | None = None,
                body: Any = None) -> Job:
        """Send a job-submitting call; Ganeti answers with the job id (possibly a string)."""
        return Job(id=int(self._request(method, path, query, body)), client=self)

    @staticmethod
    def _q(name: str) -> str:
        return quote(name, safe="")

    @staticmethod
    def _set(body: dict[str, Any], **values: Any) -> dict[str, Any]:
        """Add only the values that were given (None means "Ganeti's default")."""
        body.update({k: v for k, v in values.items() if v is not None})
        return body

    def _tags_path(self, kind: str, name: str | None) -> str:
        if kind not in TAG_KINDS:
            raise ValueError(f"tag kind must be one of {sorted(TAG_KINDS)}, not {kind!r}")
        collection = TAG_KINDS[kind]
        if collection is None:
            return "/2/tags"
        if not name:
            raise ValueError(f"{kind} tags need a name")
        return f"/2/{collection}/{self._q(name)}/tags"

    # -- reads -------------------------------------------------------------

    def version(self) -> int:
        return int(self._request("GET", "/version"))

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/2/info")

    def features(self) -> list[str]:
        return list(self._request("GET", "/2/features") or [])

    def os_list(self, bulk: bool = False) -> list[Any]:
        return self._request("GET", "/2/os", [("bulk", bulk)])

    def nodes(self, bulk: bool = True) -> list[dict[str, Any]]:
        return self._request("GET", "/2/nodes", [("bulk", bulk)])

    def node(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/2/nodes/{self._q(name)}")

    def query(self, resource: str, fields: list[str]) -> list[dict[str, Any]]:
        """``/2/query/RESOURCE``: only the named fields, one dict per item. Fields kept in the
        configuration are answered without asking any node (``/2/nodes?bulk=1`` asks every
        node daemon for its live figures: seconds under emulation). A field Ganeti could not
        fill is None."""
        answer = self._request("GET", f"/2/query/{self._q(resource)}",
                               [("fields", ",".join(fields))])
        names = [f["name"] for f in answer["fields"]]
        return [{name: value if status == 0 else None
                 for name, (status, value) in zip(names, row, strict=True)}
                for row in answer["data"]]

    def node_role(self, name: str) -> str:
        return self._request("GET", f"/2/nodes/{self._q(name)}/role")

    def instances(self, bulk: bool = True) -> list[dict[str, Any]]:
        return self._request("GET", "/2/instances", [("bulk", bulk)])

    def instance(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/2/instances/{self._q(name)}")

    def instance_info(self, name: str, static: bool = False) -> Job:
        # This GET submits a query job, so it is not repeated blindly.
        answer = self._request("GET", f"/2/instances/{self._q(name)}/info",
                               [("static", static)], retry=False)
        return Job(id=int(answer), client=self)

    def jobs(self, bulk: bool = False) -> list[int] | list[dict[str, Any]]:
        """Job ids, or full (bulk) job records."""
        if bulk:
            return self._request("GET", "/2/jobs", [("bulk", bulk)])
        return [int(j["id"]) for j in self._request("GET", "/2/jobs")]

    def job_status(self, job_id: int) -> dict[str, Any]:
        return self._request("GET", f"/2/jobs/{int(job_id)}")

    def wait_for_job_change(self, job_id: int, fields: list[str],
                            previous_job_info: list[Any] | None = None,
                            previous_log_serial: int | None = None) -> dict[str, Any] | None:
        """One long poll: None when nothing changed within the master's wait, else
        ``{"job_info": [values of fields], "log_entries": [...]}``."""
        body = {"fields": fields, "previous_job_info": previous_job_info,
                "previous_log_serial": previous_log_serial}
        answer = self._request("GET", f"/2/jobs/{int(job_id)}/wait", body=body)
        return answer if isinstance(answer, dict) else None

    def tags(self, kind: str, name: str | None = None) -> list[str]:
        return list(self._request("GET", self._tags_path(kind, name)))

    def groups(self, bulk: bool = True) -> list[dict[str, Any]]:
        return self._request("GET", "/2/groups", [("bulk", bulk)])

    def networks(self, bulk: bool = True) -> list[dict[str, Any]]:
        return self._request("GET", "/2/networks", [("bulk", bulk)])

    # -- writes (each returns a Job) ----------------------------------------

    def create_instance(self, name: str, *, dry_run: bool = False, **fields: Any) -> Job:
        """POST /2/instances with a version-1 body (``fields``: see ``instance_creation``)."""
        body = {"__version__": 1, **instance_creation(name, **fields)}
        return self._submit("POST", "/2/instances", [("dry-run", dry_run)], body)

    def create_instances_multi_alloc(self, instances: list[dict[str, Any]], *,
                                     iallocator: str | None = None,
                                     opportunistic_locking: bool | None = None,
                                     dry_run: bool = False) -> Job:
        """``POST /2/instances-multi-alloc``: each entry is an ``instance_creation``. The job's
        result
        names the allocatable and failed instances and the creation job of each."""
        body = self._set({"instances": instances}, iallocator=iallocator,
                         opportunistic_locking=opportunistic_locking)
        return self._submit("POST", "/2/instances-multi-alloc", [("dry-run", dry_run)], body)

    def remove_instance(self, name: str, shutdown_timeout: int | None = None,
                        dry_run: bool = False) -> Job:
        return self._submit("DELETE", f"/2/instances/{self._q(name)}", [("dry-run", dry_run)],
                            self._set({}, shutdown_timeout=shutdown_timeout))

    def migrate_instance(self, name: str, *, mode: str | None = None,
                         target_node: str | None = None, cleanup: bool | None = None,
                         allow_failover: bool | None = None,
                         iallocator: str | None = None) -> Job:
        body = self._set({}, mode=mode, target_node=target_node, cleanup=cleanup,
                         allow_failover=allow_failover, iallocator=iallocator)
        return self._submit("PUT", f"/2/instances/{self._q(name)}/migrate", None, body)

    def failover_instance(self, name: str, *, target_node: str | None = None,
                          iallocator: str | None = None,
                          ignore_consistency: bool | None = None,
                          shutdown_timeout: int | None = None) -> Job:
        body = self._set({}, target_node=target_node, iallocator=iallocator,
                         ignore_consistency=ignore_consistency,
                         shutdown_timeout=shutdown_timeout)
        return self._submit("PUT", f"/2/instances/{self._q(name)}/failover", None, body)

    def startup_instance(self, name: str, *, force: bool = False, no_remember: bool = False,
                         dry_run: bool = False) -> Job:
        query = [("force", force), ("no_remember", no_remember), ("dry-run", dry_run)]
        return self._submit("PUT", f"/2/instances/{self._q(name)}/startup", query)

    def shutdown_instance(self, name: str, timeout: int | None = None, *,
                          no_remember: bool = False, dry_run: bool = False) -> Job:
        # OpInstanceShutdown calls its shutdown timeout plain "timeout".
        return self._submit("PUT", f"/2/instances/{self._q(name)}/shutdown",
                            [("no_remember", no_remember), ("dry-run", dry_run)],
                            self._set({}, timeout=timeout))

    def reboot_instance(self, name: str, reboot_type: str | None = None, *,
                        ignore_secondaries: bool | None = None,
                        shutdown_timeout: int | None = None, dry_run: bool = False) -> Job:
        query = [("type", reboot_type), ("ignore_secondaries", ignore_secondaries),
                 ("dry-run", dry_run)]
        return self._submit("POST", f"/2/instances/{self._q(name)}/reboot", query,
                            self._set({}, shutdown_timeout=shutdown_timeout))

    def modify_instance(self, name: str, **params: Any) -> Job:
        return self._submit("PUT", f"/2/instances/{self._q(name)}/modify", None, params)

    def modify_cluster(self, **params: Any) -> Job:
        return self._submit("PUT", "/2/modify", None, params)

    def add_tags(self, kind: str, name: str | None, tags: list[str],
                 dry_run: bool = False) -> Job:
        """Tags travel as repeated ``tag`` query arguments; ``name`` is ignored for cluster."""
        query = [("tag", t) for t in tags] + [("dry-run", dry_run)]
        return self._submit("PUT", self._tags_path(kind, name), query)

    def delete_tags(self, kind: str, name: str | None, tags: list[str],
                    dry_run: bool = False) -> Job:
        query = [("tag", t) for t in tags] + [("dry-run", dry_run)]
        return self._submit("DELETE", self._tags_path(kind, name), query)

    def set_node_role(self, name: str, role: str, *, force: bool = False,
                      auto_promote: bool | None = None) -> Job:
        """PUT the role as a bare JSON string; the master role cannot be set via RAPI."""
        if role not in NODE_ROLES:
            raise ValueError(f"node role must be one of {NODE_ROLES}, not {role!r}")
        return self._submit("PUT", f"/2/nodes/{self._q(name)}/role",
                            [("force", force), ("auto-promote", auto_promote)], role)

    def evacuate_node(self, name: str, *, mode: str | None = None,
                      iallocator: str | None = None, remote_node: str | None = None,
                      early_release: bool | None = None, dry_run: bool = False) -> Job:
        """Job result lists the per-instance jobs Ganeti submitted."""
        if iallocator and remote_node:
            raise ValueError("give either iallocator or remote_node, not both")
        body = self._set({}, mode=mode, iallocator=iallocator, remote_node=remote_node,
                         early_release=early_release)
        return self._submit("POST", f"/2/nodes/{self._q(name)}/evacuate",
                            [("dry-run", dry_run)], body)

    def migrate_node(self, name: str, *, mode: str | None = None,
                     iallocator: str | None = None, target_node: str | None = None) -> Job:
        # No dry-run: ganeti-rapi treats any query argument here as the pre-2.5
        # request format and would then ignore the body.
        body = self._set({}, mode=mode, iallocator=iallocator, target_node=target_node)
        return self._submit("POST", f"/2/nodes/{self._q(name)}/migrate", None, body)

    def cancel_job(self, job_id: int) -> tuple[bool, str]:
        """Cancel a job that has not started yet; Ganeti answers ``[success, message]``."""
        ok, message = self._request("DELETE", f"/2/jobs/{int(job_id)}")
        return bool(ok), str(message)
