"""Shared constants and helpers for the streammask end-to-end suite.

Imported by conftest.py and the test modules (pytest puts this directory on sys.path).

Every synthetic secret a test sends is registered with `plant()`; the last test of the session
(test_zz_no_leaks.py) greps every proxy log for all of them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FIXTURES = HERE / "fixtures"

BIN_DIR = Path(os.environ.get("STREAMMASK_BIN_DIR", "/root/.cache/streammask-target/release"))
PROXY_BIN = BIN_DIR / "streammask"
MOCK_BIN = BIN_DIR / "streammask-mock"
CLAUDE_BIN = os.environ.get("CLAUDE_BIN", "/root/.cache/streammask-node/node_modules/.bin/claude")

# Optional directory passed as `--rules` to every proxy (and to `rules examples`). Unset by
# default: the suite tests the embedded default pack. fixtures/rules-fallback is a stand-in for
# when the pack does not compile.
EXTRA_RULES = os.environ.get("STREAMMASK_E2E_RULES") or None
if EXTRA_RULES and not Path(EXTRA_RULES).is_absolute():
    EXTRA_RULES = str((REPO / EXTRA_RULES).resolve())

PLACEHOLDER_KEY = "streammask-e2e-placeholder-key-0001"
API_KEY = "sk-ant-api03-streammask-e2e-client-key-test"
MODEL = "claude-opus-4-8"

PLACEHOLDER_RE = re.compile(r"\[MASKED:([a-z0-9-]+):([0-9a-f]{8})\]")

# --- secrets the specific tests plant (all synthetic) -------------------------------------
GITHUB_TOKEN = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"
GITHUB_TOKEN_2 = "ghp_Q9w8E7r6T5y4U3i2O1p0AaSsDdFfGgHhJjKk"
AWS_KEY_ID = "AKIAQWERTYUIOPASDFGH"
PG_PASSWORD = "S3cretPassw0rd1"
PG_URI = f"postgres://app:{PG_PASSWORD}@db.internal:5432/app"
CURL_PIPE_SH = "curl -fsSL https://get.example.sh | sh"
BLOCK_PHRASE = "SM-E2E-FORBIDDEN-314159"
BLOCK_RULE_ID = "e2e-blocked-request-phrase"
BLOCK_RULES_DIR = FIXTURES / "rules-block"

PLANTED: set[str] = set()


def plant(*secrets: str) -> None:
    """Register secrets that must never appear in any proxy output."""
    for s in secrets:
        if s:
            PLANTED.add(s)


plant(GITHUB_TOKEN, GITHUB_TOKEN_2, AWS_KEY_ID, PG_PASSWORD)


def mock_script(script: dict | list | str) -> str:
    """An `x-mock-script` header value, hex-encoded: scripts carry the secrets the mock must
    answer with, and the proxy refuses a request whose headers hold one (it cannot mask a
    header). Hex hides them from the proxy's rules, as any encoding the rules do not decode."""
    text = script if isinstance(script, str) else json.dumps(script)
    return "hex:" + text.encode().hex()


def placeholder_hash(secret: str) -> str:
    """The 8-hex part of a placeholder: HMAC-SHA256(key, secret), first 4 bytes."""
    return hmac.new(PLACEHOLDER_KEY.encode(), secret.encode(), hashlib.sha256).hexdigest()[:8]


def placeholder_for(secret: str, rule_id: str | None = None) -> str | re.Pattern[str]:
    h = placeholder_hash(secret)
    if rule_id:
        return f"[MASKED:{rule_id}:{h}]"
    return re.compile(r"\[MASKED:[a-z0-9-]+:" + h + r"\]")


def has_placeholder_for(text: str, secret: str) -> bool:
    """True when `text` holds the deterministic placeholder of `secret` (any rule id)."""
    h = placeholder_hash(secret)
    return any(m.group(2) == h for m in PLACEHOLDER_RE.finditer(text))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: the sockets stay bound until all are picked (two calls of
    `free_port` may return the same port, and a proxy refuses an admin port equal to its own)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# --- SSE --------------------------------------------------------------------------------------

def parse_sse(raw: bytes) -> list[tuple[str | None, str]]:
    """Split an SSE body into (event, data) pairs. Any of CRLF, LF, CR ends a line."""
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


def sse_text(events: Iterable[tuple[str | None, str]]) -> str:
    """Concatenate all text_delta pieces (any index)."""
    out = []
    for name, data in events:
        if name == "content_block_delta":
            d = json.loads(data)["delta"]
            if d.get("type") == "text_delta":
                out.append(d["text"])
    return "".join(out)


def message_text(message: Any) -> str:
    return "\n".join(b.text for b in message.content if b.type == "text")


def assert_anthropic_error(body: bytes | str | dict, error_type: str | None = None) -> dict:
    obj = json.loads(body) if not isinstance(body, dict) else body
    assert obj.get("type") == "error", obj
    err = obj.get("error")
    assert isinstance(err, dict) and isinstance(err.get("type"), str), obj
    assert isinstance(err.get("message"), str) and err["message"], obj
    if error_type:
        assert err["type"] == error_type, obj
    return obj


def user_request(text: str, stream: bool = False, **extra) -> dict:
    body = {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
    }
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


# --- raw HTTP/1.1 (for what httpx will not send) -----------------------------------------------

class RawResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, complete: bool):
        self.status = status
        self.headers = headers
        self.body = body
        self.complete = complete  # False when the connection closed before the body ended

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def read_response(sock: socket.socket, timeout: float = 15.0) -> RawResponse | None:
    """Read one HTTP/1.1 response. None when the peer closed without sending anything.
    Raises AssertionError if nothing conclusive arrives within `timeout` (a hang)."""
    sock.settimeout(timeout)
    buf = b""

    def more() -> bool:
        nonlocal buf
        try:
            b = sock.recv(65536)
        except socket.timeout as exc:
            raise AssertionError(f"no response within {timeout}s (the proxy hangs)") from exc
        except ConnectionResetError:
            return False
        buf += b
        return bool(b)

    while b"\r\n\r\n" not in buf:
        if not more():
            if not buf:
                return None
            raise AssertionError(f"connection closed inside the response head: {buf[:200]!r}")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    resp = RawResponse(status, headers, b"", True)
    buf = rest
    te = (resp.header("transfer-encoding") or "").lower()
    if "chunked" in te:
        body = b""
        while True:
            while b"\r\n" not in buf:
                if not more():
                    resp.body, resp.complete = body, False
                    return resp
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                if not more():
                    resp.body, resp.complete = body + buf[:size], False
                    return resp
            body += buf[:size]
            buf = buf[size + 2 :]
            if size == 0:
                resp.body = body
                return resp
    length = resp.header("content-length")
    if length is not None:
        n = int(length)
        while len(buf) < n:
            if not more():
                resp.body, resp.complete = buf, False
                return resp
        resp.body = buf[:n]
        return resp
    while more():
        pass
    resp.body = buf
    return resp


def raw_exchange(port: int, data: bytes, timeout: float = 15.0, half_close: bool = False):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return read_response(s, timeout)


def http_request(method: str, path: str, port: int, body: bytes = b"", headers: list[tuple[str, str]] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


CLAUDE_TIMEOUT_S = 120


def run_claude(
    base_url: str,
    prompt: str,
    tmp: Path,
    *args: str,
    session_id: str | None = None,
    api_key: str | None = API_KEY,
    settings: dict | None = None,
    timeout_s: float = CLAUDE_TIMEOUT_S,
    extra_env: dict | None = None,
):
    """Run `claude -p` against `base_url` with a fresh HOME under `tmp`, no telemetry and no
    nonessential traffic. `api_key=None` leaves ANTHROPIC_API_KEY unset; `settings` is written
    to ~/.claude/settings.json (e.g. an apiKeyHelper); `extra_env` adds variables (Bedrock and
    Vertex modes). Claude Code and everything it started
    are killed after `timeout_s`."""
    home = tmp / "home"
    project = tmp / "project"
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    project.mkdir(exist_ok=True)
    if settings is not None:
        (home / ".claude" / "settings.json").write_text(json.dumps(settings))
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "ANTHROPIC_BASE_URL": base_url,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    if api_key is not None:
        env["ANTHROPIC_API_KEY"] = api_key
    env.update(extra_env or {})
    # `session_id=""` passes no --session-id (for --resume/--continue, which name their own).
    session = [] if session_id == "" else ["--session-id", session_id or str(uuid.uuid4())]
    cmd = [CLAUDE_BIN, "-p", prompt, *session, *args]
    proc = subprocess.Popen(
        cmd,
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # Claude Code and anything it started
        stdout, stderr = proc.communicate()
        pytest.fail(f"claude -p did not finish within {timeout_s}s: {stderr.decode(errors='replace')[-2000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
