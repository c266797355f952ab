"""Unit tests for lab.ganeti.rapi against an HTTPS test double of ganeti-rapi."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from _pytest._code import ExceptionInfo
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab.ganeti.rapi import (
    Job,
    JobFailed,
    JobTimeout,
    RapiAuthError,
    RapiClient,
    RapiError,
    RapiUnreachable,
    format_op_error,
)

USER, PASSWORD = "labadmin", "pw-Zq7s3cret"
DROP = object()  # route answer: close the connection without any HTTP response


def make_cert(directory: Path, stem: str) -> tuple[Path, Path]:
    """Self-signed server certificate for localhost / 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{stem}.localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class FakeRapi:
    """Routes (method, path) to a queue of answers; the last answer repeats."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Any]] = {}
        self.seen: list[Seen] = []

    def route(self, method: str, path: str, *answers: Any) -> None:
        self.routes[(method, path)] = list(answers)

    def calls(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    def answer(self, method: str, path: str) -> Any:
        queue = self.routes.get((method, path))
        if not queue:
            return 404, {"code": 404, "message": "Not Found", "explain": f"no route {path}"}
        return queue.pop(0) if len(queue) > 1 else queue[0]


class Handler(BaseHTTPRequestHandler):
    server: Any

    def _handle(self) -> None:
        fake: FakeRapi = self.server.fake
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        fake.seen.append(Seen(self.command, url.path, parse_qs(url.query),
                              dict(self.headers.items()), json.loads(raw) if raw else None))
        answer = fake.answer(self.command, url.path)
        if answer is DROP:
            self.close_connection = True
            return
        status, payload = answer if isinstance(answer, tuple) else (200, answer)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("certs")
    return {"good": make_cert(d, "server"), "other": make_cert(d, "other")}


@pytest.fixture
def server(certs: dict[str, tuple[Path, Path]]) -> Iterator[tuple[FakeRapi, int]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certs["good"])
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    httpd.fake = FakeRapi()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield httpd.fake, httpd.server_address[1]  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def fake(server: tuple[FakeRapi, int]) -> FakeRapi:
    return server[0]


@pytest.fixture
def client(server: tuple[FakeRapi, int], certs: dict[str, tuple[Path, Path]]) -> RapiClient:
    return RapiClient("127.0.0.1", server[1], username=USER, password=PASSWORD,
                      ca_file=certs["good"][0], timeout=5)


def job_record(job_id: int, status: str, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "status": status, "summary": ["INSTANCE_CREATE(web1)"],
            "opstatus": [status], "opresult": [None], "oplog": [[]],
            "received_ts": [100, 0], "start_ts": None, "end_ts": None, **extra}


# -- request shapes ----------------------------------------------------------

def test_create_instance_minimal_body(fake: FakeRapi, client: RapiClient) -> None:
    fake.route("POST", "/2/instances", "17")
    job = client.create_instance("web1", disk_template="plain", disks=[{"size": 1024}],
                                 os="debootstrap+default")
    assert isinstance(job, Job) and job.id == 17
    (seen,) = fake.calls("POST", "/2/instances")
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.query == {}
    assert seen.body == {
        "__version__": 1, "mode": "create", "name": "web1", "disk_template": "plain",
        "disks": [{"size": 1024}], "nics": [{}], "os": "debootstrap+default",
        "start": True, "ip_check": False, "name_check": False,
        "conflicts_check": True, "wait_for_sync": True,
    }


def test_create_instance_full_body_and_dry_run(fake: FakeRapi, client: RapiClient) -> None:
    fake.route("POST", "/2/instances", 18)
    client.create_instance("db1", disk_template="drbd", disks=[{"size": 512}, {"size": 64}],
                           nics=[{"link": "br0"}], pnode="n1", snode="n2",
                           beparams={"memory": 256}, hvparams={"kernel_path": ""},
                           start=False, dry_run=True, no_install=True, iallocator=None)
    (seen,) = fake.calls("POST", "/2/instances")
    assert seen.query == {"dry-run": ["1"]}
    body = seen.body
    assert body["nics"] == [{"link": "br0"}]
    assert (body["pnode"], body["snode"], body["start"]) == ("n1", "n2", False)
    assert body["beparams"] == {"memory": 256} and body["hvparams"] == {"kernel_path": ""}
    assert body["no_install"] is True
    for unset in ("os", "iallocator", "hypervisor", "osparams"):
        assert unset not in body


def test_migrate_and_failover_bodies(fake: FakeRapi, client: RapiClient) -> None:
    fake.route("PUT", "/2/instances/web1/migrate", "20")
    fake.route("PUT", "/2/instances/web1/failover", "21")
    client.migrate_instance("web1", mode="live")
    client.migrate_instance("web1", cleanup=True, allow_failover=False, target_node="n3")
    client.failover_instance("web1", ignore_consistency=True, shutdown_timeout=30)
    m1, m2 = fake.calls("PUT", "/2/instances/web1/migrate")
    assert m1.body == {"mode": "live"}
    assert m2.body == {"cleanup": True, "allow_failover": False, "target_node": "n3"}
    (f,) = fake.calls("PUT", "/2/instances/web1/failover")
    assert f.body == {"ignore_consistency": True, "shutdown_timeout": 30}


def test_shutdown_remove_and_role_requests(fake: FakeRapi, client: RapiClient) -> None:
    fake.route("PUT", "/2/instances/web1/shutdown", "1")
    fake.route("DELETE", "/2/instances/web1", "2")
    fake.route("PUT", "/2/nodes/n2/role", "3")
    assert client.shutdown_instance("web1", timeout=15).id == 1
    assert client.remove_instance("web1", shutdown_timeout=5, dry_run=True).id == 2
    assert client.set_node_role("n2", "drained", force=True).id == 3
    assert fake.calls("PUT", "/2/instances/web1/shutdown")[0].body == {"timeout": 15}
    (rm,) = fake.calls("DELETE", "/2/instances/web1")
    assert rm.body == {"shutdown_timeout": 5} and rm.query == {"dry-run": ["1"]}
    (role,) = fake.calls("PUT", "/2/nodes/n2/role")
    assert role.body == "drained" and role.query == {"force": ["1"]}
    with pytest.raises(ValueError):
        client.set_node_role("n2", "master")


def test_tag_query_strings(fake: FakeRapi, client: RapiClient) -> None:
    fake.route("PUT", "/2/instances/web1/tags", "30")
    fake.route("PUT", "/2/tags", "31")
    fake.route("DELETE", "/2/nodes/n1/tags", "32")
    fake.route("GET", "/2/groups/default/tags", ["a", "b"])
    client.add_tags("instance", "web1", ["lab:one", "has space"])
    client.add_tags("cluster", "ignored-name", ["scenario:x"])
    client.delete_tags("node", "n1", ["a", "b"])
    assert client.tags("group", "default") == ["a", "b"]
    (put,) = fake.calls("PUT", "/2/instances/web1/tags")
    assert put.query == {"tag": ["lab:one", "has space"]} and put.body is None
    assert fake.calls("PUT", "/2/tags")[0].query == {"tag": ["scenario:x"]}
    assert fake.calls("DELETE", "/2/nodes/n1/tags")[0].query == {"tag": ["a", "b"]}
    with pytest.raises(ValueError, match="tag kind"):
        client.tags("disk", "x")
    with pytest.raises(ValueError):
        client.add_tags("node", None, ["t"])


def test_basic_auth_header_sent(fake: FakeRapi, client: RapiClient) -> None:
    fake.route("GET", "/version", 2)
    assert client.version() == 2
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert fake.seen[0].headers["Authorization"] == expected


def test_password_absent_from_repr_and_logs(fake: FakeRapi, client: RapiClient,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.route("GET", "/2/info", {"name": "cluster.lab"})
    fake.route("GET", "/2/instances/nope", (404, {"code": 404, "message": "Not Found",
                                                  "explain": "no such instance"}))
    assert client.info() == {"name": "cluster.lab"}
    with pytest.raises(RapiError):
        client.instance("nope")
    assert PASSWORD not in repr(client) and USER in repr(client)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, token, "Authorization"):
        assert secret not in caplog.text
    rapi_lines = [r.getMessage() for r in caplog.records if r.name == "lab.rapi"]
    assert any("GET /2/info -> 200" in line for line in rapi_lines), rapi_lines
    assert any("/2/instances/nope -> 404" in line for line in rapi_lines), rapi_lines


# -- errors ------------------------------------------------------------------

def test_error_json_becomes_rapi_error(fake: FakeRapi, client: RapiClient) -> None:
    fake.route("PUT", "/2/instances/web1/migrate",
               (400, {"code": 400, "message": "Bad Request",
                      "explain": "Parameter 'mode' has invalid value 'warp'"}))
    with pytest.raises(RapiError) as err:
        client.migrate_instance("web1", mode="warp")
    e = err.value
    assert (e.method, e.path, e.status) == ("PUT", "/2/instances/web1/migrate", 400)
    assert not isinstance(e, RapiAuthError | RapiUnreachable)
    for part in ("PUT", "/2/instances/web1/migrate", "400", "Bad Request", "'warp'"):
        assert part in str(e)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors(fake: FakeRapi, client: RapiClient, status: int) -> None:
    fake.route("POST", "/2/instances", (status, {"code": status, "message": "Forbidden",
                                                 "explain": ""}))
    with pytest.raises(RapiAuthError) as err:
        client.create_instance("x", disk_template="plain", disks=[{"size": 1}])
    assert err.value.status == status
    assert "write" in str(err.value) and USER in str(err.value)
    assert PASSWORD not in str(err.value)


def test_connection_refused_is_unreachable_after_the_get_retries(
        certs: dict[str, tuple[Path, Path]], caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    client = RapiClient("127.0.0.1", port, username=USER, password=PASSWORD,
                        ca_file=certs["good"][0], timeout=2, get_attempts=3)
    with caplog.at_level(logging.DEBUG, logger="lab.rapi"), \
            pytest.raises(RapiUnreachable) as err:
        client.info()
    # gives up after its attempts (2 retries), it does not wait out a timeout
    assert sum("retrying GET /2/info" in r.getMessage() for r in caplog.records) == 2
    assert f"127.0.0.1:{port}" in str(err.value)
    assert "loopback" in str(err.value) and "cluster IP" in str(err.value)
    assert err.value.status is None


def test_wrong_certificate_is_rejected(fake: FakeRapi, server: tuple[FakeRapi, int],
                                       certs: dict[str, tuple[Path, Path]]) -> None:
    fake.route("GET", "/2/info", {"name": "should-not-be-read"})
    client = RapiClient("127.0.0.1", server[1], username=USER, password=PASSWORD,
                        ca_file=certs["other"][0], timeout=5)
    with pytest.raises(RapiError) as err:
        client.info()
    assert not isinstance(err.value, RapiUnreachable)
    assert "certificate" in str(err.value).lower() and str(certs["other"][0]) in str(err.value)
    # The TLS library's reason is in the message; its exception chain (and frames) are not.
    assert "verify failed" in str(err.value).lower()
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert fake.seen == []  # no request got past the handshake


def _closed_port() -> int:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("attempts", [1, 2])
def test_failed_call_carries_no_credentials(certs: dict[str, tuple[Path, Path]],
                                            attempts: int) -> None:
    """The hardening issue: a RAPI call that could not connect printed the HTTP library's
    frame arguments (the headers, with the Basic token) in pytest's traceback. The error now
    has no chain, so no rendering of it, with or without locals, reaches those frames."""
    port = _closed_port()
    client = RapiClient("127.0.0.1", port, username=USER, password=PASSWORD,
                        ca_file=certs["good"][0], timeout=2, get_attempts=attempts,
                        cluster="c1.lab.test")
    with pytest.raises(RapiUnreachable) as err:
        client.info()
    e = err.value
    assert e.__cause__ is None and e.__context__ is None and e.__suppress_context__
    assert "c1.lab.test" in str(e) and f"127.0.0.1:{port}" in str(e) and "/2/info" in str(e)
    assert "Connection refused" in str(e) and "object at 0x" not in str(e)
    assert e.where == f"cluster c1.lab.test (127.0.0.1:{port})"
    rendered = [
        "".join(traceback.TracebackException.from_exception(e, capture_locals=True).format()),
        # what pytest prints: frame arguments always, locals with -l
        str(ExceptionInfo.from_exception(e).getrepr(showlocals=True, style="long",
                                                     funcargs=True, truncate_locals=False)),
    ]
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for text in rendered:
        for secret in (PASSWORD, token, "Authorization", "/urllib3/", "/requests/"):
            assert secret not in text, f"{secret!r} in a rendered traceback"


def test_auth_header_is_masked_in_reprs(certs: dict[str, tuple[Path, Path]]) -> None:
    """Where a header dict is printed anyway (a frame that is not cut), its value is masked."""
    client = RapiClient("127.0.0.1", username=USER, password=PASSWORD,
                        ca_file=certs["good"][0])
    prepared = client._session.prepare_request(requests.Request("GET", client._base + "/"))
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert str(prepared.headers["Authorization"]) == f"Basic {token}"  # what is sent
    for text in (repr(prepared.headers), repr(dict(prepared.headers)),
                 repr(client._session.auth), repr(client)):
        assert token not in text and PASSWORD not in text


def test_error_names_the_cluster(fake: FakeRapi, server: tuple[FakeRapi, int],
                                 certs: dict[str, tuple[Path, Path]]) -> None:
    fake.route("GET", "/2/instances/nope", (404, {"code": 404, "message": "Not Found"}))
    client = RapiClient("127.0.0.1", server[1], username=USER, password=PASSWORD,
                        ca_file=certs["good"][0], timeout=5, cluster="c2.lab.test")
    with pytest.raises(RapiError) as err:
        client.instance("nope")
    assert str(err.value).startswith(
        f"RAPI GET /2/instances/nope on cluster c2.lab.test (127.0.0.1:{server[1]}) failed "
        f"(HTTP 404)")
    assert "cluster='c2.lab.test'" in repr(client)


def test_missing_ca_file_fails_early(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RapiClient("127.0.0.1", username=USER, password=PASSWORD, ca_file=tmp_path / "no.pem")


def test_get_retried_but_post_not(fake: FakeRapi, client: RapiClient) -> None:
    fake.route("GET", "/2/info", DROP, {"name": "cluster.lab"})
    assert client.info() == {"name": "cluster.lab"}
    assert len(fake.calls("GET", "/2/info")) == 2
    fake.route("POST", "/2/instances", DROP, "99")
    with pytest.raises(RapiUnreachable):
        client.create_instance("web1", disk_template="plain", disks=[{"size": 1}])
    assert len(fake.calls("POST", "/2/instances")) == 1


# -- jobs --------------------------------------------------------------------

def test_job_wait_success_returns_opresult(fake: FakeRapi, client: RapiClient) -> None:
    done = job_record(7, "success", opresult=[["node1.lab", "node2.lab"]],
                      start_ts=[101, 0], end_ts=[104, 500000])
    fake.route("GET", "/2/jobs/7", job_record(7, "queued"), job_record(7, "running"), done)
    job = Job(7, client)
    assert job.wait(timeout=10, poll=0.01) == [["node1.lab", "node2.lab"]]
    assert len(fake.calls("GET", "/2/jobs/7")) == 3
    assert job.run_seconds == pytest.approx(3.5)
    assert job.queue_seconds == pytest.approx(1.0)
    assert job.finished_at is not None and job.finished_at >= job.submitted_at
    assert job.last_status == "success" and job.summary == ["INSTANCE_CREATE(web1)"]


def test_job_wait_checks_before_sleeping(fake: FakeRapi, client: RapiClient,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake.route("GET", "/2/jobs/8", job_record(8, "success", opresult=[True]))
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    assert Job(8, client).wait(poll=2.0) == [True]
    assert slept == []


def test_job_wait_error_raises_job_failed(fake: FakeRapi, client: RapiClient) -> None:
    log = [[i, [1700000000 + i, 0], "message", f"step {i}"] for i in range(1, 15)]
    log.append([15, [1700000015, 0], "message", "* removing disks after failure"])
    failed = job_record(
        9, "error",
        opresult=[["OpPrereqError", ["The given name (web1) does not resolve", "resolver_error"]]],
        oplog=[log])
    fake.route("GET", "/2/jobs/9", job_record(9, "running"), failed)
    with pytest.raises(JobFailed) as err:
        Job(9, client).wait(timeout=10, poll=0.01)
    e, text = err.value, str(err.value)
    assert (e.job_id, e.status) == (9, "error")
    assert "OpPrereqError: The given name (web1) does not resolve (resolver_error)" in text
    assert "job 9" in text and "INSTANCE_CREATE(web1)" in text and "'error'" in text
    assert e.oplog_tail[-1].endswith("* removing disks after failure")
    assert "removing disks after failure" in text
    assert len(e.oplog_tail) == 10 and not any(line.endswith("step 1") for line in e.oplog_tail)


def test_job_canceled_raises_job_failed(fake: FakeRapi, client: RapiClient) -> None:
    fake.route("GET", "/2/jobs/10", job_record(10, "canceled", opresult=[None]))
    with pytest.raises(JobFailed, match="canceled"):
        Job(10, client).wait(timeout=5, poll=0.01)


def test_job_wait_timeout(fake: FakeRapi, client: RapiClient) -> None:
    fake.route("GET", "/2/jobs/11", job_record(11, "running"))
    with pytest.raises(JobTimeout) as err:
        Job(11, client).wait(timeout=0.3, poll=0.05)
    assert err.value.job_id == 11 and err.value.status == "running"
    assert err.value.waited >= 0.3
    text = str(err.value)
    assert "job 11" in text and "'running'" in text and "still running on the cluster" in text
    # It polled, and gave up: sleeps of 0.05 s growing 1.5x fit at most 6 times in 0.3 s, so a
    # wait that ignored its timeout would show here as more polls (no wall-clock limit needed).
    assert 2 <= len(fake.calls("GET", "/2/jobs/11")) <= 7


def test_format_op_error_shapes() -> None:
    assert format_op_error(["OpExecError", ["Disk sync failed"]]) == "OpExecError: Disk sync failed"
    assert format_op_error(["OpPrereqError", ["Bad", "wrong_input"]]) == \
        "OpPrereqError: Bad (wrong_input)"
    assert format_op_error("plain text") == "plain text"


def test_jobs_listing_and_cancel(fake: FakeRapi, client: RapiClient) -> None:
    fake.route("GET", "/2/jobs", [{"id": "3", "uri": "/2/jobs/3"}, {"id": 4, "uri": "/2/jobs/4"}])
    fake.route("DELETE", "/2/jobs/4", [True, "Job 4 canceled"])
    assert client.jobs() == [3, 4]
    assert client.cancel_job(4) == (True, "Job 4 canceled")


# -- jobs in bulk --------------------------------------------------------------

def _wait_answers(*statuses: str) -> list[dict[str, Any]]:
    return [{"job_info": [s], "log_entries": []} for s in statuses]


def test_job_set_waits_through_the_long_poll(fake: FakeRapi, client: RapiClient) -> None:
    from lab.ganeti.jobs import JobSet, JobSetFailed

    fake.route("POST", "/2/instances", "21", "22")
    fake.route("GET", "/2/jobs/21/wait", None, *_wait_answers("running", "success"))
    fake.route("GET", "/2/jobs/22/wait", *_wait_answers("error"))
    fake.route("GET", "/2/jobs/21", job_record(21, "success", opresult=[["inst1.lab"]],
                                               start_ts=[102, 0], end_ts=[110, 250000]))
    fake.route("GET", "/2/jobs/22", job_record(
        22, "error", start_ts=[101, 0], end_ts=[103, 0],
        opresult=[["OpPrereqError", ["Not enough memory on node2.lab", "insufficient"]]]))
    jobs = JobSet(client)
    for name in ("inst1", "inst2"):
        jobs.submit(name, lambda n=name: client.create_instance(
            n, disk_template="plain", disks=[{"size": 256}]))
    outcomes = {o.label: o for o in jobs.wait()}
    ok, failed = outcomes["inst1"], outcomes["inst2"]
    assert ok.ok and ok.result == [["inst1.lab"]]
    assert (ok.queue_seconds, ok.run_seconds) == (pytest.approx(2.0), pytest.approx(8.25))
    assert failed.status == "error"
    assert failed.reason == "OpPrereqError: Not enough memory on node2.lab (insufficient)"
    # Waited by long poll: the job record is read once, when the wait said it was final.
    assert len(fake.calls("GET", "/2/jobs/21")) == 1
    waits = fake.calls("GET", "/2/jobs/21/wait")
    assert len(waits) == 3
    assert waits[0].body == {"fields": ["status"], "previous_job_info": None,
                             "previous_log_serial": None}
    assert waits[2].body["previous_job_info"] == ["running"]
    assert [o.label for o in jobs.failures()] == ["inst2"]
    with pytest.raises(JobSetFailed, match="1 of 2 jobs did not succeed") as err:
        jobs.raise_for_failures()
    assert "inst2 (job 22): error: OpPrereqError: Not enough memory" in str(err.value)


def test_job_set_records_a_refused_submission(fake: FakeRapi, client: RapiClient) -> None:
    from lab.ganeti.jobs import JobSet

    fake.route("POST", "/2/instances", (400, {"code": 400, "message": "Bad Request",
                                              "explain": "Missing disk_template"}))
    jobs = JobSet(client)
    outcome = jobs.submit("bad", lambda: client.create_instance(
        "bad", disk_template="plain", disks=[]))
    assert outcome.status == "submit-failed" and "Missing disk_template" in str(outcome.reason)
    assert jobs.wait() == [outcome]  # nothing to wait for, and no exception


def test_job_set_follows_a_multi_allocation(fake: FakeRapi, client: RapiClient) -> None:
    from lab.ganeti.jobs import JobSet

    fake.route("POST", "/2/instances-multi-alloc", "30")
    fake.route("GET", "/2/jobs/30/wait", *_wait_answers("success"))
    fake.route("GET", "/2/jobs/30", job_record(30, "success", opresult=[{
        "jobs": [[True, 31], [False, "job queue full"]], "allocatable": ["a.lab", "b.lab"],
        "failed": ["c.lab"]}]))
    fake.route("GET", "/2/jobs/31/wait", *_wait_answers("success"))
    fake.route("GET", "/2/jobs/31", job_record(31, "success", start_ts=[105, 0],
                                               end_ts=[120, 0]))
    jobs = JobSet(client)
    jobs.submit_multi_alloc([{"name": n, "disk_template": "plain", "disks": [{"size": 256}]}
                             for n in ("a.lab", "b.lab", "c.lab")], iallocator="hail")
    outcomes = {o.label: o for o in jobs.wait()}
    assert fake.calls("POST", "/2/instances-multi-alloc")[0].body["iallocator"] == "hail"
    assert outcomes["multi-alloc"].ok
    assert outcomes["a.lab"].ok and outcomes["a.lab"].run_seconds == pytest.approx(15.0)
    assert (outcomes["b.lab"].status, outcomes["b.lab"].reason) == ("submit-failed",
                                                                   "job queue full")
    assert outcomes["c.lab"].status == "not-allocated"
    # Four entries (the parent, one creation job, two refusals); the work is the three
    # instances, of which one was made: the parent's success is not an instance's.
    summary = jobs.summary()
    assert (summary["jobs"], summary["succeeded"], summary["failed"]) == (4, 1, 2)


def test_job_set_is_safe_from_many_threads(fake: FakeRapi, client: RapiClient,
                                           tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from lab.ganeti.jobs import JobSet
    from lab.timings import Timings

    ids = list(range(40, 56))
    fake.route("POST", "/2/instances", *[str(i) for i in ids])
    for i in ids:
        fake.route("GET", f"/2/jobs/{i}/wait", *_wait_answers("success"))
        fake.route("GET", f"/2/jobs/{i}", job_record(i, "success", start_ts=[101, 0],
                                                     end_ts=[102, 0]))
    jobs = JobSet(client, waiters=4)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: jobs.submit(f"i{n}", lambda: client.create_instance(
            f"i{n}", disk_template="plain", disks=[{"size": 1}])), range(len(ids))))
    outcomes = jobs.wait()
    assert sorted(o.job_id for o in outcomes) == ids
    assert all(o.ok for o in outcomes)
    timings = Timings(tmp_path, "r")
    with timings.phase("create") as phase:
        jobs.record(phase)
    metrics = timings.phases[0]["metrics"]
    assert metrics["jobs.succeeded"] == len(ids) and metrics["jobs.failed"] == 0
    assert metrics["job i3.run_s"] == 1.0 and metrics["job i3.outcome"] == "success"
