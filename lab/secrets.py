"""The lab's secrets, registered where they are made or read and scrubbed from everything a run
writes: test reports (so JUnit and the terminal), captured output, the live ``[lab]`` lines,
timings.json, report.html and artifacts.

The registry is process-wide on purpose: a secret is made in one layer (bootstrap, keys) and
must be hidden in another (the pytest plugin), and whatever fails must not decide whether it is
hidden. Each registered secret also registers the forms it travels in: a RAPI password as its
HTTP Basic token and its HA1 hash, a private key as each line of its base64 body, and every
form as it looks escaped in JSON, in a Python repr and in HTML/XML.

Two patterns are scrubbed whether or not anything was registered, because pytest shortens long
reprs in the middle (``-l``) and an exact match then misses the cut pieces: the value of an
``Authorization: Basic/Bearer`` header and any PEM private key block, complete or cut.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import logging
import os
import re
import tarfile
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "MIN_LENGTH",
    "RAPI_REALM",
    "ScrubFilter",
    "register",
    "register_lab_secrets",
    "scrub",
    "scrub_bytes",
    "scrub_file",
    "scrub_report",
    "scrub_tarball",
]

log = logging.getLogger("lab.secrets")

# Shorter strings are refused: replacing them would mangle ordinary text ("a", "root", "1234")
# and hide nothing worth hiding. Derived forms (tokens, hashes, key lines) are always longer.
MIN_LENGTH = 8
# A private key's body lines shorter than this (the last line of a block) are common base64
# fragments; the block itself is still registered whole.
MIN_KEY_LINE = 20
# ganeti-rapi's HTTP digest realm: the HA1 in /var/lib/ganeti/rapi/users is md5(user:realm:pw).
RAPI_REALM = "Ganeti Remote API"

_lock = threading.Lock()
_labels: dict[str, str] = {}  # every registered form -> the label that replaces it

_AUTH_HEADER = re.compile(
    r"""(?P<head>\bAuthorization['"]?\s*[:=]\s*['"]?(?:Basic|Bearer)\s+)"""
    r"""(?P<value>[A-Za-z0-9+/=._~-]+)""", re.IGNORECASE)
# A PEM private key, with real or repr/JSON-escaped line breaks, up to its END line or to where
# a shortened repr cut it. The two alternatives share no character, so matching is linear.
_KEY_BLOCK = re.compile(
    r"-----BEGIN (?P<kind>(?:[A-Z0-9]+ )*)PRIVATE KEY-----"
    r"(?:[A-Za-z0-9+/=\s]|\\[rn])*"
    r"(?:-----END (?P=kind)PRIVATE KEY-----)?")
_KEY_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_KEY_BODY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= "
                            "\t\r\n\\")
_PEM_PRIVATE = re.compile(
    r"-----BEGIN (?P<kind>(?:[A-Z0-9]+ )*)PRIVATE KEY-----\r?\n"
    r"(?P<body>.*?)"
    r"-----END (?P=kind)PRIVATE KEY-----", re.DOTALL)
# Labels end up inside JSON strings, XML attributes and HTML: keep them to harmless characters.
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9 ._:/()@-]+")


# Registry ----------------------------------------------------------------------------------


def register(secret: str, label: str, *, user: str | None = None) -> bool:
    """Register ``secret`` (and its derived forms) to be replaced by ``***<label>***``.

    With ``user``, ``secret`` is that user's RAPI password: its HTTP Basic token
    (base64 of ``user:password``) and its HA1 (md5 of ``user:Ganeti Remote API:password``) are
    registered too. A secret holding a PEM private key registers each key block, its body and
    each body line of at least 20 characters. Empty and short secrets (under ``MIN_LENGTH``)
    register nothing of their own (their derived forms still do); returns whether anything
    was registered.
    """
    if not isinstance(secret, str) or not secret:
        return False
    label = _LABEL_UNSAFE.sub("-", label).strip() or "secret"
    forms: dict[str, str] = {secret: label}
    if user is not None:
        for encoding in ("utf-8", "latin-1"):  # requests encodes Basic credentials as latin-1
            try:
                raw = f"{user}:{secret}".encode(encoding)
            except UnicodeEncodeError:
                continue
            forms.setdefault(base64.b64encode(raw).decode("ascii"), f"{label} (basic auth)")
        ha1 = hashlib.md5(f"{user}:{RAPI_REALM}:{secret}".encode()).hexdigest()
        forms[ha1] = f"{label} (HA1)"
    for block, body, lines in _private_keys(secret):
        forms.setdefault(block, label)
        forms.setdefault(body, label)
        for line in lines:
            if len(line) >= MIN_KEY_LINE:
                forms.setdefault(line, label)
    added = False
    with _lock:
        for form, form_label in forms.items():
            for variant in _escaped(form):
                if len(variant) >= MIN_LENGTH and variant not in _labels:
                    _labels[variant] = form_label
                    added = True
    return added


def _private_keys(text: str) -> list[tuple[str, str, list[str]]]:
    """(block, body without line breaks, body lines) of each PEM private key in ``text``."""
    found = []
    for match in _PEM_PRIVATE.finditer(text):
        # Encrypted traditional PEM keys carry "Proc-Type:"/"DEK-Info:" headers: not secret.
        lines = [ln.strip() for ln in match.group("body").splitlines()
                 if ln.strip() and ":" not in ln]
        found.append((match.group(0).strip(), "".join(lines), lines))
    return found


# How HTML/XML writers spell quotes: as is (ElementTree text), named (html.escape, ElementTree
# attributes) or numeric (markupsafe, so jinja's report).
_QUOTES = {'"': ('"', "&quot;", "&#34;"), "'": ("'", "&#x27;", "&#39;")}


def _escaped(form: str) -> set[str]:
    """``form`` as it appears raw, inside a JSON string, a Python repr and HTML/XML."""
    variants = {form, json.dumps(form)[1:-1], repr(form)[1:-1]}
    if any(c in form for c in "&<>\"'"):
        markup = html.escape(form, quote=False)
        for double in _QUOTES['"']:
            for single in _QUOTES["'"]:
                variants.add(markup.replace('"', double).replace("'", single))
    return variants


@lru_cache(maxsize=64)
def _alternation(forms: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first: a key block wins over its own lines, a token over a prefix of it.
    return re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


def register_lab_secrets(lab_dir: Path) -> int:
    """Register the secrets a lab keeps in its state directory: the RAPI credentials of each
    cluster (``rapi.json``), the RAPI TLS key (``rapi.pem``) and the lab's SSH private keys
    (``*_ed25519``, the machines' host keys ``ssh_host_*_key``). Unreadable files are skipped
    (logged). Returns how many files were read."""
    lab_dir = Path(lab_dir)
    if not lab_dir.is_dir():
        return 0
    count = 0
    for path in sorted(lab_dir.rglob("rapi.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            user, password = str(doc["user"]), str(doc["password"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("secrets: skipping %s: %s", path, type(exc).__name__)
            continue
        register(password, f"rapi password {path.parent.name}", user=user)
        count += 1
    keys = [*lab_dir.rglob("*_ed25519"), *lab_dir.rglob("ssh_host_*_key"),
            *lab_dir.rglob("rapi.pem")]
    for path in sorted(p for p in keys if p.is_file()):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.debug("secrets: skipping %s: %s", path, type(exc).__name__)
            continue
        register(text, f"private key {path.parent.name}/{path.name}")
        count += 1
    return count


# Scrubbing ---------------------------------------------------------------------------------


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***<label>***``, and every
    Authorization header value and PEM private key (even one cut short) hidden."""
    if not text:
        return text
    with _lock:
        labels = dict(_labels)
    # A substring test per form is a fast C scan; the (cached) regex is built only from the
    # forms actually present, which is usually none, so large logs stay cheap to scrub.
    present = tuple(sorted(form for form in labels if form in text))
    if present:
        text = _alternation(present).sub(lambda m: f"***{labels[m.group(0)]}***", text)
    if "authorization" in text.lower():
        text = _AUTH_HEADER.sub(r"\g<head>***authorization***", text)
    if "PRIVATE KEY-----" in text:
        text = _KEY_BLOCK.sub("***private key***", text)
        text = _scrub_key_tails(text)
    return text


def _scrub_key_tails(text: str) -> str:
    """Hide the end of a private key whose start a shortened repr cut off
    (``...kZjA=\\n-----END OPENSSH PRIVATE KEY-----``): walk back over body characters."""
    out: list[str] = []
    done = 0
    for match in _KEY_END.finditer(text):
        start = match.start()
        while start > done and text[start - 1] in _KEY_BODY_CHARS:
            start -= 1
        out += [text[done:start], "***private key***"]
        done = match.end()
    out.append(text[done:])
    return "".join(out)


def scrub_bytes(data: bytes) -> bytes:
    """``scrub`` for bytes: undecodable bytes pass through unchanged (surrogateescape)."""
    if not data:
        return data
    text = data.decode("utf-8", "surrogateescape")
    scrubbed = scrub(text)
    return data if scrubbed == text else scrubbed.encode("utf-8", "surrogateescape")


_TAR_SUFFIXES = {".tar": "", ".gz": "gz", ".bz2": "bz2", ".xz": "xz"}


def _tar_compression(path: Path) -> str | None:
    """tarfile's compression name for a tarball path, or None if it is not one."""
    name = path.name
    if name.endswith(".tgz"):
        return "gz"
    if ".tar" in path.suffixes:
        return _TAR_SUFFIXES.get(path.suffix)
    return None


def scrub_tarball(src: Path, dest: Path) -> bool:
    """Write ``src`` (a tarball) to ``dest`` with every regular member's content scrubbed, in
    the same compression; nothing is extracted to disk. Returns whether anything changed."""
    src, dest = Path(src), Path(dest)
    compression = _tar_compression(src)
    mode = f"w:{compression}" if compression else "w"
    changed = False
    buffer = io.BytesIO()
    with tarfile.open(src, "r:*") as inp, tarfile.open(fileobj=buffer, mode=mode) as out:
        for info in inp:
            name = scrub(info.name)
            changed |= name != info.name
            info.name = name
            if not info.isreg():
                out.addfile(info)
                continue
            member = inp.extractfile(info)
            data = member.read() if member is not None else b""
            clean = scrub_bytes(data)
            changed |= clean is not data
            info.size = len(clean)
            out.addfile(info, io.BytesIO(clean))
    if changed or src.resolve() != dest.resolve():
        _write_atomic(dest, buffer.getvalue(), like=src)
    return changed


def scrub_file(path: Path) -> bool:
    """Scrub one file in place (a tarball member by member); returns whether it changed."""
    path = Path(path)
    if _tar_compression(path) is not None:
        try:
            return scrub_tarball(path, path)
        except (tarfile.TarError, EOFError, OSError) as exc:
            # Not a readable tarball after all: treat it as bytes like anything else.
            log.debug("secrets: %s is not a readable tarball (%s)", path, exc)
    data = path.read_bytes()
    clean = scrub_bytes(data)
    if clean is data:
        return False
    _write_atomic(path, clean, like=path)
    return True


def _write_atomic(path: Path, data: bytes, like: Path) -> None:
    # A reader (or a crash) sees the old file or the scrubbed one, never half of one; the
    # mode of the original (0600 for secrets-adjacent files) is kept.
    mode = like.stat().st_mode & 0o7777 if like.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _scrub_value(value: Any) -> Any:
    """``value`` with secrets scrubbed: strings replaced, containers rebuilt, dataclasses
    (pytest's traceback representations) scrubbed in place."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub_value(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            old = getattr(value, f.name, None)
            new = _scrub_value(old)
            if new is not old and new != old:
                object.__setattr__(value, f.name, new)  # some pytest reprs may be frozen
    return value


def _has_secret(text: str) -> bool:
    return scrub(text) != text


def scrub_report(report: Any) -> None:
    """Scrub a pytest test or collect report in place, before anything writes it: its
    traceback (``longrepr``), captured output (``sections``), ``user_properties`` and xfail
    reason. A traceback keeps its structure (so JUnit's message and the short summary keep
    working) unless a secret survives that, in which case it becomes scrubbed text."""
    longrepr = getattr(report, "longrepr", None)
    if isinstance(longrepr, str | tuple):  # text, or a skip's (path, lineno, reason)
        report.longrepr = _scrub_value(longrepr)
    elif longrepr is not None:
        text = str(longrepr)
        crash = getattr(getattr(longrepr, "reprcrash", None), "message", "") or ""
        if _has_secret(text) or _has_secret(crash):
            _scrub_value(longrepr)
            if _has_secret(str(longrepr)):
                report.longrepr = scrub(text)
    sections = getattr(report, "sections", None)
    if sections:
        report.sections = [tuple(_scrub_value(part) for part in section)
                           for section in sections]
    properties = getattr(report, "user_properties", None)
    if properties:
        # JUnit writes str(value): an object whose str holds a secret becomes that text.
        report.user_properties = [
            (scrub(str(name)), scrub(str(value)) if _has_secret(str(value)) else value)
            for name, value in properties]
    wasxfail = getattr(report, "wasxfail", None)
    if isinstance(wasxfail, str):
        report.wasxfail = scrub(wasxfail)


class ScrubFilter(logging.Filter):
    """A handler filter that scrubs each record's message, traceback and stack before the
    handler formats it (the record is shared, so later handlers see the scrubbed one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the handler's problem to report
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True
