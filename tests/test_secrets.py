"""Tests for lab/secrets.py and for every place a run writes being scrubbed of the lab's
secrets (the hardening issue: a failing RAPI call wrote the RAPI password to the terminal and
junit.xml). No lab is brought up: the RAPI "cluster" is a closed port on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import re
import secrets
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import markupsafe

# Imported before any inner run, as in test_plugin.py (numpy cannot be imported twice).
import matplotlib.backends.backend_agg
import matplotlib.dates
import matplotlib.figure
import matplotlib.patches  # noqa: F401
import pytest
from _pytest._io.saferepr import saferepr
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lab import artifacts, report
from lab import secrets as lab_secrets
from lab.ganeti import bootstrap
from lab.ganeti.certs import rapi_certificate
from lab.ganeti.cluster import Cluster
from lab.keys import ensure_keypair
from lab.timings import Timings

pytest_plugins = ["pytester"]

USER = "lab-admin"
# Runs of 12+ base64 characters: what is left of a key when a scrub missed part of it.
B64_RUN = re.compile(r"[A-Za-z0-9+/]{12,}")


def rapi_forms(password: str, user: str = USER) -> dict[str, str]:
    """The password and the forms it travels in: HTTP Basic token, RAPI users file HA1."""
    return {
        "password": password,
        "basic token": base64.b64encode(f"{user}:{password}".encode()).decode(),
        "HA1": hashlib.md5(f"{user}:Ganeti Remote API:{password}".encode()).hexdigest(),
    }


def new_password() -> str:
    # Fresh per test: the registry is process-wide and the outer run's plugin scrubs too.
    return secrets.token_urlsafe(24)


def openssh_key() -> str:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()


def key_lines(pem: str) -> list[str]:
    return [ln for ln in pem.strip().splitlines()[1:-1] if ln]


# 1. the registry -----------------------------------------------------------------------------


def test_rapi_password_and_derived_forms_are_scrubbed() -> None:
    password = new_password()
    assert lab_secrets.register(password, "rapi password c1.lab", user=USER)
    forms = rapi_forms(password)
    text = (f"password={forms['password']} Authorization: Basic {forms['basic token']} "
            f"users file: {USER} {{HA1}}{forms['HA1']} write")
    clean = lab_secrets.scrub(text)
    for form in forms.values():
        assert form not in clean
    assert "password=***rapi password c1.lab***" in clean
    assert "{HA1}***rapi password c1.lab (HA1)***" in clean
    assert f"users file: {USER} " in clean  # the user name is no secret


def test_escaped_forms_are_scrubbed() -> None:
    password = "pw \"quoted\" \\ <tag> & " + new_password()
    lab_secrets.register(password, "odd password")
    root = ET.Element("testcase", message=password)
    root.text = password
    for text in (json.dumps({"p": password}), repr({"p": password}),
                 f"<td>{html.escape(password)}</td>", f"<td>{markupsafe.escape(password)}</td>",
                 ET.tostring(root, encoding="unicode")):
        clean = lab_secrets.scrub(text)
        assert password[-20:] not in clean and "***odd password***" in clean, text
        assert "quoted" not in clean, text


def test_unrelated_text_is_unchanged() -> None:
    lab_secrets.register(new_password(), "rapi password c1.lab", user=USER)
    text = ("RAPI GET /2/info on cluster c1.lab (10.0.0.5:5080) failed: user lab-admin, "
            "Authorization failed; Basic checks passed; BEGIN PRIVATE KEY material is none\n"
            "b3BlbnNzaC1rZXktdjE= aGVsbG8gd29ybGQ= deadbeef" * 3)
    assert lab_secrets.scrub(text) == text
    assert lab_secrets.scrub("") == ""
    assert lab_secrets.scrub_bytes(b"\xff\xfe plain \x00") == b"\xff\xfe plain \x00"


@pytest.mark.parametrize("secret", ["", "a", "pw", "root", "1234567"])
def test_empty_and_short_secrets_are_not_registered(secret: str) -> None:
    assert not lab_secrets.register(secret, "too short")
    text = "a banana for root: pw 1234567, a2 a"
    assert lab_secrets.scrub(text) == text


def test_short_password_still_registers_its_token_and_hash() -> None:
    # The password alone is too short to replace safely; its derived forms are not.
    forms = rapi_forms("x", user="someone-" + new_password()[:6])
    assert lab_secrets.register("x", "short rapi password", user=forms_user(forms))
    assert lab_secrets.scrub(f"x marks {forms['basic token']}") == \
        "x marks ***short rapi password (basic auth)***"


def forms_user(forms: dict[str, str]) -> str:
    return base64.b64decode(forms["basic token"]).decode().rsplit(":", 1)[0]


def test_private_key_lines_and_cut_reprs_are_scrubbed() -> None:
    pem = openssh_key()
    assert lab_secrets.register(pem, "ssh key lab/id_ed25519")
    lines = key_lines(pem)
    assert all(len(ln) >= 20 for ln in lines[:-1])
    assert "***ssh key lab/id_ed25519***" in lab_secrets.scrub(pem)
    for line in lines:
        if len(line) >= lab_secrets.MIN_KEY_LINE:
            assert lab_secrets.scrub(f"x {line} y") == "x ***ssh key lab/id_ed25519*** y"
    # pytest -l shows a local holding the key as a repr cut in the middle: neither the
    # head nor the tail piece (no longer whole lines) may survive.
    cut = saferepr(pem, maxsize=120)
    assert "..." in cut
    assert not B64_RUN.search(lab_secrets.scrub(cut).replace("***", " ")), \
        lab_secrets.scrub(cut)
    assert not B64_RUN.search(lab_secrets.scrub(repr(pem)).replace("***", " "))


def test_unregistered_private_keys_and_auth_headers_are_scrubbed_anyway() -> None:
    pem = openssh_key()  # never registered
    text = f"key = {pem!r}\nheaders = {{'Authorization': 'Basic dXNlcjpwYXNzd29yZA=='}}"
    clean = lab_secrets.scrub(text)
    assert not any(line in clean for line in key_lines(pem))
    assert "dXNlcjpwYXNzd29yZA" not in clean
    assert "'Authorization': 'Basic ***authorization***'" in clean
    tail_only = "...kZjA9PQ==\\n-----END OPENSSH PRIVATE KEY-----\\n'"
    assert "kZjA9PQ" not in lab_secrets.scrub(tail_only)


def test_scrub_bytes_keeps_undecodable_bytes() -> None:
    password = new_password()
    lab_secrets.register(password, "rapi password c1")
    data = b"\x1b[0m\xff console " + password.encode() + b" \xc3\x28 end"
    assert lab_secrets.scrub_bytes(data) == \
        b"\x1b[0m\xff console ***rapi password c1*** \xc3\x28 end"


def test_scrub_filter_scrubs_messages_and_tracebacks() -> None:
    forms = rapi_forms(new_password())
    lab_secrets.register(forms["password"], "rapi password c1", user=USER)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(lab_secrets.ScrubFilter())
    logger = logging.getLogger("test_secrets.filter")
    logger.addHandler(handler)
    try:
        logger.warning("login with %s", forms["basic token"])
        try:
            raise RuntimeError(f"bad password {forms['password']}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "login with ***rapi password c1 (basic auth)***" in out
    assert "RuntimeError: bad password ***rapi password c1***" in out
    assert not any(form in out for form in forms.values())


# 2. where secrets are registered -------------------------------------------------------------


def test_register_lab_secrets_reads_a_lab_directory(tmp_path: Path) -> None:
    forms = rapi_forms(new_password())
    state = tmp_path / "mylab" / "clusters" / "c1"
    state.mkdir(parents=True)
    (state / "rapi.json").write_text(json.dumps({"user": USER, "password": forms["password"]}))
    pem_and_cert, cert = rapi_certificate("c1.lab.test", "10.0.0.5")
    (state / "rapi.pem").write_text(pem_and_cert)
    login, nodes = openssh_key(), openssh_key()
    (tmp_path / "mylab" / "id_ed25519").write_text(login)
    (tmp_path / "mylab" / "node_ed25519").write_text(nodes)
    broken = tmp_path / "mylab" / "clusters" / "c2"
    broken.mkdir()
    (broken / "rapi.json").write_text("{not json")

    assert lab_secrets.register_lab_secrets(tmp_path / "mylab") == 4
    assert lab_secrets.register_lab_secrets(tmp_path / "no-such-lab") == 0

    everything = "\n".join([*forms.values(), login, nodes, pem_and_cert])
    clean = lab_secrets.scrub(everything)
    assert not any(form in clean for form in forms.values())
    rsa_key = pem_and_cert[:pem_and_cert.index("-----BEGIN CERTIFICATE")]
    for key in (login, nodes, rsa_key):
        assert not any(line in clean for line in key_lines(key) if len(line) >= 20)
    # The certificate is public (clients pin it): alone, it is left alone.
    assert lab_secrets.scrub(cert) == cert
    assert "***rapi password c1 (HA1)***" in clean
    assert "***private key mylab/id_ed25519***" in clean


def test_ensure_keypair_registers_new_and_existing_keys(tmp_path: Path) -> None:
    ensure_keypair(tmp_path / "id_ed25519", "lab-login")
    made = (tmp_path / "id_ed25519").read_text()
    assert key_lines(made)[2] not in lab_secrets.scrub(made)
    existing = openssh_key()  # written by an earlier process: registered when read
    (tmp_path / "node_ed25519").write_text(existing)
    (tmp_path / "node_ed25519.pub").write_text("ssh-ed25519 AAAA lab-nodes\n")
    ensure_keypair(tmp_path / "node_ed25519", "lab-nodes")
    assert "***ssh key" in lab_secrets.scrub(key_lines(existing)[2])


def test_bootstrap_registers_the_rapi_secrets_it_makes(tmp_path: Path) -> None:
    plan = SimpleNamespace(name="c9", fqdn="c9.lab.test", ip="10.0.0.9")
    cluster = Cluster(SimpleNamespace(dir=tmp_path), plan)  # type: ignore[arg-type]
    password = bootstrap._rapi_secrets(cluster)
    forms = rapi_forms(password)
    clean = lab_secrets.scrub(" ".join(forms.values()))
    assert clean == ("***rapi password c9.lab.test*** ***rapi password c9.lab.test (basic auth)"
                     "*** ***rapi password c9.lab.test (HA1)***")
    tls = (cluster.state_dir / "rapi.pem").read_text()
    tls_key = tls[:tls.index("-----BEGIN CERTIFICATE")]
    assert not B64_RUN.search(lab_secrets.scrub(tls_key).replace("***", " "))


# 3. what a run writes: timings, report, artifacts ---------------------------------------------


def test_timings_file_is_scrubbed(tmp_path: Path) -> None:
    forms = rapi_forms(new_password())
    lab_secrets.register(forms["password"], "rapi password c1", user=USER)
    timings = Timings(tmp_path, "run-1", host={"note": forms["HA1"]})
    with pytest.raises(RuntimeError), timings.phase(f"login {forms['password']}") as phase:
        phase.metric("header", f"Basic {forms['basic token']}")
        raise RuntimeError(f"refused {forms['basic token']}")
    text = timings.write().read_text()
    assert not any(form in text for form in forms.values())
    doc = Timings.load(tmp_path)  # still valid JSON of the schema
    assert doc["phases"][0]["name"] == "login ***rapi password c1***"
    assert doc["host"]["note"] == "***rapi password c1 (HA1)***"


def test_report_is_scrubbed_even_for_old_unscrubbed_runs(tmp_path: Path) -> None:
    forms = rapi_forms(new_password())
    run = tmp_path / "run-old"
    run.mkdir()
    # An old record, written before scrubbing existed, with the secret in plain text.
    (run / "timings.json").write_text(json.dumps({
        "schema": 1, "run_id": "run-old", "started": "2026-11-24T10:00:00.000Z",
        "finished": "2026-11-24T10:01:00.000Z", "host": {"token": forms["basic token"]},
        "meta": {}, "phases": [{
            "name": f"test {forms['password']}", "parent": None,
            "start": "2026-11-24T10:00:00.000Z", "seconds": 3.0, "outcome": "failed",
            "error": f"RapiError: {forms['HA1']}", "metrics": {"pw": forms["password"]}}]}))
    lab_secrets.register(forms["password"], "rapi password c1", user=USER)
    html = report.render([run]).read_text()
    assert not any(form in html for form in forms.values())
    assert "***rapi password c1***" in html


def _tarball(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]


def test_scrub_tarball_and_file(tmp_path: Path) -> None:
    forms = rapi_forms(new_password())
    lab_secrets.register(forms["password"], "rapi password c1", user=USER)
    src = tmp_path / "logs.tar.gz"
    binary = bytes(range(256)) * 4
    _tarball(src, {"ganeti/rapi-daemon.log": f"auth {forms['basic token']}\n".encode(),
                   "ganeti/binary.dat": binary})
    assert lab_secrets.scrub_tarball(src, tmp_path / "clean.tar.gz")
    clean = _members(tmp_path / "clean.tar.gz")
    assert clean["ganeti/rapi-daemon.log"] == b"auth ***rapi password c1 (basic auth)***\n"
    assert clean["ganeti/binary.dat"] == binary
    assert lab_secrets.scrub_file(src)  # in place
    assert _members(src) == clean
    assert not lab_secrets.scrub_file(src)  # nothing left to change


def test_artifacts_are_scrubbed_before_they_are_written(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    forms = rapi_forms(new_password())
    lab_secrets.register(forms["password"], "rapi password c1", user=USER)
    key = openssh_key()
    lab_secrets.register(key, "ssh key lab/node_ed25519")
    leak = f"{forms['password']} {forms['basic token']} {forms['HA1']}\n{key}"
    console = tmp_path / "console"
    console.mkdir()
    (console / "node1.log").write_bytes(b"\xffboot\n" + leak.encode())

    def fetch_logs(m: object, dest: Path, timeout: float) -> Path:
        local = dest / "node1-var-log-ganeti.tar.gz"
        _tarball(local, {"ganeti/rapi-daemon.log": leak.encode()})
        return local

    def network_xml(name: str) -> str:
        raise RuntimeError(f"network {name} gone ({forms['password']})")

    monkeypatch.setattr(artifacts, "fetch_ganeti_logs", fetch_logs)
    monkeypatch.setattr(artifacts.virt, "domain_xml", lambda domain: f"<domain>{leak}</domain>")
    monkeypatch.setattr(artifacts.virt, "network_xml_of", network_xml)
    node = SimpleNamespace(name="node1", domain="glab-t-node1")
    machine = SimpleNamespace(name="node1",
                              run=lambda cmd, timeout: SimpleNamespace(stdout=leak, stderr=leak))
    plan = SimpleNamespace(machines=[node], hypervisors=[node], console_dir=str(console),
                           mgmt_network="glab-t-mgmt", lab_network="glab-t-lab")
    lab = SimpleNamespace(name="t", plan=plan, machine=lambda name: machine)

    dest = artifacts.collect(lab, tmp_path / "artifacts", masters=["node1"])  # type: ignore[arg-type]
    written = {p.name: p.read_bytes() for p in dest.iterdir()}
    assert {"node1.console.log", "node1.domain.xml", "node1.journal.txt",
            "node1-var-log-ganeti.tar.gz", "node1.gnt-cluster-verify.txt",
            "COLLECTION-PROBLEMS.txt"} <= set(written)
    contents = dict(written)
    contents.update(_members(dest / "node1-var-log-ganeti.tar.gz"))
    del contents["node1-var-log-ganeti.tar.gz"]
    needles = [*forms.values(), *(ln for ln in key_lines(key) if len(ln) >= 20)]
    for name, data in contents.items():
        for needle in needles:
            assert needle.encode() not in data, f"{needle[:8]}... in artifact {name}"
    assert b"***rapi password c1***" in contents["ganeti/rapi-daemon.log"]
    assert contents["node1.console.log"].startswith(b"\xffboot\n***rapi password c1***")
    assert b"network glab-t-mgmt gone (***rapi password c1***)" in \
        contents["COLLECTION-PROBLEMS.txt"]


# 4. a whole pytest run whose RAPI call fails -------------------------------------------------

INNER_TESTS = """
import base64
import functools
import hashlib
import json
import logging
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import lab.ganeti.cluster as cluster_module
from lab.ganeti.cluster import Cluster
from lab.ganeti.rapi import RapiClient, RapiUnreachable

STATE = Path(os.environ["LAB_TEST_STATE"])
log = logging.getLogger("scenario")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_secret():
    return json.loads((STATE / "clusters" / "c1" / "rapi.json").read_text())


@pytest.fixture
def cluster(monkeypatch):
    # The lab's cluster, its RAPI on a port where nothing listens.
    monkeypatch.setattr(cluster_module, "RapiClient",
                        functools.partial(RapiClient, port=closed_port(), timeout=2))
    plan = SimpleNamespace(name="c1", fqdn="c1.lab.test", ip="127.0.0.1")
    return Cluster(SimpleNamespace(dir=STATE), plan)


def test_rapi_call_fails(cluster, timings):
    secret = lab_secret()
    token = base64.b64encode(f"{secret['user']}:{secret['password']}".encode()).decode()
    with timings.phase("create instances"):
        cluster.rapi.info()


def test_direct_client_call_fails():
    secret = lab_secret()
    password = secret["password"]
    headers = {"Authorization": "Basic " + base64.b64encode(
        f"lab-admin:{password}".encode()).decode()}
    client = RapiClient("127.0.0.1", closed_port(), username="lab-admin", password=password,
                        ca_file=STATE / "clusters" / "c1" / "rapi-ca.pem", timeout=2,
                        get_attempts=1, cluster="c1.lab.test")
    client.create_instance("web1", disk_template="plain", disks=[{"size": 64}])


def test_error_names_the_cluster(cluster):
    with pytest.raises(RapiUnreachable) as err:
        cluster.rapi.version()
    assert "RAPI GET /version on cluster c1.lab.test (127.0.0.1:" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_secrets_in_output_and_records(cluster, timings, record_property,
                                       record_testsuite_property):
    secret = lab_secret()
    password = secret["password"]
    token = base64.b64encode(f"lab-admin:{password}".encode()).decode()
    ha1 = hashlib.md5(f"lab-admin:Ganeti Remote API:{password}".encode()).hexdigest()
    cluster.rapi  # loads (and registers) the lab's credentials
    print("stdout:", password, token)
    sys.stderr.write(f"stderr: {ha1}\\n")
    log.warning("log: %s %s", token, ha1)
    record_property("auth", "Basic " + token)
    record_testsuite_property("suite-ha1", ha1)  # reaches junit.xml without a report
    with timings.phase(f"phase {password}") as phase:
        phase.metric("ha1", ha1)
        raise RuntimeError(f"scenario failed with {token}")


def test_skip_reason(cluster):
    cluster.rapi
    pytest.skip(f"skipped: {lab_secret()['password']}")


@pytest.mark.xfail(reason=f"xfail: {lab_secret()['password']}", strict=True)
def test_xfail_reason(cluster):
    cluster.rapi
    raise AssertionError("known")
"""

RUN_ID = "secrets-run"


def _readable_contents(path: Path, name: str) -> dict[str, bytes]:
    """A written file as a scan must read it: the members of an archive (artifact tarballs of
    /var/log/ganeti), a compressed file uncompressed; a byte scan of either would find nothing
    whatever they hold."""
    import gzip
    import tarfile

    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            return {f"{name}:{m.name}": tar.extractfile(m).read()  # type: ignore[union-attr]
                    for m in tar.getmembers() if m.isfile()}
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return {name: gzip.decompress(data)}
    return {name: data}


def test_readable_contents_opens_archives(tmp_path: Path) -> None:
    import io
    import tarfile

    archive = tmp_path / "node1-var-log-ganeti.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("ganeti/rapi-daemon.log")
        info.size = len(b"secret here")
        tar.addfile(info, io.BytesIO(b"secret here"))
    assert _readable_contents(archive, "a") == {"a:ganeti/rapi-daemon.log": b"secret here"}


@pytest.mark.parametrize("extra", [
    pytest.param((), id="plain"),
    pytest.param(("-l", "--junitxml=junit.xml"), id="showlocals"),
    pytest.param(("-l", "-vv", "-rA", "--tb=long", "--junitxml=junit.xml", "-o", "log_cli=true",
                  "--log-file=run.log"), id="showlocals-verbose-logs"),
    # workers scrub their reports before sending them; the controller writes junit.xml
    pytest.param(("-n", "2", "-l", "--junitxml=junit.xml"), id="xdist-showlocals"),
])
def test_failed_rapi_call_leaves_no_secret_anywhere(
        pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...]) -> None:
    # The lab's state (its secret store) lives outside everything the run may write.
    state = tmp_path_factory.mktemp("labstate")
    forms = rapi_forms(new_password())
    cluster_dir = state / "clusters" / "c1"
    cluster_dir.mkdir(parents=True)
    (cluster_dir / "rapi.json").write_text(json.dumps({"user": USER,
                                                       "password": forms["password"]}))
    (cluster_dir / "rapi-ca.pem").write_text("")  # the call fails before TLS
    monkeypatch.setenv("LAB_TEST_STATE", str(state))
    monkeypatch.setenv("GANETI_LAB_RUN_ID", RUN_ID)
    monkeypatch.setenv("GANETI_LAB_STATE", str(tmp_path_factory.mktemp("state-root")))
    pytester.makepyfile(test_inner=INNER_TESTS)
    runs = pytester.path / "runs"

    # A real process: its own registry, and stdout/stderr as a user's terminal gets them.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--lab-runs={runs}",
                                           "-o", "junit_logging=all", *extra, timeout=300)

    # An unreachable RAPI is the harness's error, not Ganeti's failure.
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=1, xfailed=1)
    out = result.stdout.str()
    assert "RAPI GET /2/info on cluster c1.lab.test (127.0.0.1:" in out
    assert "RAPI POST /2/instances on cluster c1.lab.test (127.0.0.1:" in out
    junit = pytester.path / "junit.xml" if extra else runs / RUN_ID / "junit.xml"
    # with xdist each worker keeps its own record, in runs/<run-id>/<worker>/
    timings = sorted((runs / RUN_ID).rglob("timings.json"))
    assert junit.is_file() and timings and (timings[0].parent / "report.html").is_file()
    # Everything the run wrote: its stdout and stderr, and every file under its directory
    # (junit.xml, runs/<run-id>/{timings.json,report.html,*.png}, basetemp, log file).
    written: dict[str, bytes] = {
        "stdout": "\n".join(result.outlines).encode(),
        "stderr": "\n".join(result.errlines).encode(),
    }
    for path in pytester.path.rglob("*"):
        if path.is_file():
            written.update(_readable_contents(path, str(path.relative_to(pytester.path))))
    needles = {**forms,
               # pieces, for a secret cut short by a shortened repr
               "password head": forms["password"][:10], "password tail": forms["password"][-10:],
               "token middle": forms["basic token"][16:32], "HA1 head": forms["HA1"][:12]}
    leaks = [f"{what} in {name}" for name, data in written.items()
             for what, needle in needles.items() if needle.encode() in data]
    assert not leaks, leaks

    assert "c1.lab.test" in junit.read_text()
    # The secrets were there to be hidden (the scan above is not vacuous): their labels show
    # where they were.
    assert "***rapi password c1.lab.test" in out
    assert "***rapi password c1.lab.test" in junit.read_text()
    assert any("***rapi password c1.lab.test***" in t.read_text() for t in timings)
