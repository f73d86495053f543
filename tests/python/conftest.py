"""Harness for the streammask end-to-end suite: the mock Claude API, proxies, SDK clients.

Fixtures
- `mock_server` (session): one `streammask-mock` process on an ephemeral port.
- `mock` (function): the same mock, reset (queue, records, counters) before the test.
- `proxy_factory` (session): `proxy_factory(config=..., upstream=..., name=...)` starts a proxy
  (or reuses one started with the same arguments), waits for /readyz and kills it at the end of
  the session. Logs go to `<session tmp>/logs/<name>-<n>.{stdout,stderr}.log`. Every proxy runs
  the embedded rule pack plus `fixtures/rules-block` (a request `block` rule the pack lacks)
  plus $STREAMMASK_E2E_RULES when set.
- `proxy` (session): the default proxy in front of the session mock; `limits_proxy` (small
  body and SSE event limits) and `dead_proxy` (upstream refuses connections). These and the
  `rules examples` run are launched in parallel at session start (`_prestart`), because each
  compiles the whole rule pack.
- `client` / `client_for`: `anthropic.Anthropic` clients pointed at a proxy.

Every process started here is killed at teardown (and at interpreter exit as a fallback).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

import authkit
import smtest
from smtest import (
    API_KEY,
    BLOCK_RULES_DIR,
    EXTRA_RULES,
    MOCK_BIN,
    PLACEHOLDER_KEY,
    PROXY_BIN,
    free_port,
    free_ports,
)

READY_TIMEOUT_S = 240.0  # compiling the full pack takes ~12 CPU-seconds per proxy
_PROCESSES: list[subprocess.Popen] = []
# Every proxy log file written in this session (read by test_zz_no_leaks.py).
PROXY_LOGS: list[Path] = []
# Audit logs the session's proxies wrote (rotated files next to them included; read by
# test_zz_no_leaks.py).
AUDIT_OUTPUTS: list[Path] = []


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@atexit.register
def _kill_all() -> None:
    for proc in _PROCESSES:
        _kill(proc)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "last: run after every other test (log leak checks)")
    config.addinivalue_line("markers", "claude_code: drives the real Claude Code CLI")


def pytest_collection_modifyitems(session, config, items):
    # Tests marked `last` run at the very end, whatever the file order.
    items.sort(key=lambda item: 1 if item.get_closest_marker("last") else 0)


def pytest_sessionstart(session):
    for binary in (PROXY_BIN, MOCK_BIN):
        if not binary.exists():
            raise pytest.UsageError(
                f"{binary} not found: build with `cargo build --release --workspace --bins` "
                f"or set STREAMMASK_BIN_DIR"
            )


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("streammask-e2e")
    (d / "logs").mkdir()
    return d


# --- mock --------------------------------------------------------------------------------------

class Mock:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.http = httpx.Client(base_url=self.url, timeout=10.0)

    def script(self, scripts: list[dict] | dict) -> dict:
        r = self.http.post("/_mock/script", json=scripts)
        assert r.status_code == 200, r.text
        return r.json()

    def received(self) -> list[dict]:
        r = self.http.get("/_mock/received")
        assert r.status_code == 200, r.text
        return r.json()

    def messages(self) -> list[dict]:
        """Received `POST /v1/messages` requests."""
        return [r for r in self.received() if r["path"] == "/v1/messages"]

    def stats(self) -> dict:
        r = self.http.get("/_mock/stats")
        assert r.status_code == 200, r.text
        return r.json()

    def reset(self) -> None:
        r = self.http.post("/_mock/reset")
        assert r.status_code == 200, r.text

    @staticmethod
    def header(record: dict, name: str) -> str | None:
        values = [v for k, v in record["headers"] if k.lower() == name.lower()]
        return values[0] if values else None

    @staticmethod
    def headers_named(record: dict, name: str) -> list[str]:
        return [v for k, v in record["headers"] if k.lower() == name.lower()]


def start_mock(session_dir: Path, name: str = "mock") -> Mock:
    port_file = session_dir / f"{name}.port"
    log = session_dir / "logs" / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(MOCK_BIN), "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--threads", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _PROCESSES.append(proc)
    deadline = time.monotonic() + 15
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc)
            raise RuntimeError(f"mock did not start: {log.read_text(errors='replace')}")
        time.sleep(0.02)
    return Mock(proc, int(port_file.read_text()), log)


@pytest.fixture(scope="session")
def mock_server(session_dir) -> Mock:
    m = start_mock(session_dir)
    yield m
    m.http.close()
    _kill(m.proc)


@pytest.fixture
def mock(mock_server) -> Mock:
    mock_server.reset()
    return mock_server


# --- proxy -------------------------------------------------------------------------------------

class Proxy:
    def __init__(self, proc, port, admin_port, stdout_log, stderr_log, name):
        self.proc = proc
        self.port = port
        self.admin_port = admin_port
        self.url = f"http://127.0.0.1:{port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.stdout_log = stdout_log
        self.stderr_log = stderr_log
        self.name = name

    def log_text(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in (self.stdout_log, self.stderr_log) if p.exists()
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthz(self) -> int:
        return httpx.get(self.admin_url + "/healthz", timeout=5).status_code

    def assert_healthy(self) -> None:
        """No panic in the log, the process runs, /healthz is 200."""
        log = self.log_text()
        assert "panicked" not in log, f"{self.name} panicked:\n{log[-4000:]}"
        assert self.alive(), f"{self.name} exited:\n{log[-4000:]}"
        assert self.healthz() == 200


def _merged_rules_dir(session_dir: Path, dirs: list[str | None]) -> str | None:
    dirs = [d for d in dirs if d]
    if not dirs:
        return None
    if len(dirs) == 1:
        return dirs[0]
    merged = session_dir / "rules-merged"
    if not merged.exists():
        merged.mkdir()
        for i, d in enumerate(dirs):
            for f in sorted(Path(d).glob("*.toml")):
                shutil.copy(f, merged / f"{i:02d}-{f.name}")
    return str(merged)


def proxy_rules_dir(session_dir: Path) -> str | None:
    """The `--rules` directory every proxy (and `rules examples`) runs with: the suite's own
    request-block rule, plus STREAMMASK_E2E_RULES when set. The embedded pack stays loaded."""
    return _merged_rules_dir(session_dir, [EXTRA_RULES, str(BLOCK_RULES_DIR)])


def _is_addr_in_use(log: str) -> bool:
    return "address already in use" in log.lower() or "address in use" in log.lower()


class ProxyLauncher:
    """One proxy process: launched at once, waited for when first needed. Launching several
    before waiting lets their (CPU-bound) rule compilation overlap with other work."""

    def __init__(self, session_dir: Path, upstream: str, config: str | None, name: str):
        self.session_dir = session_dir
        self.upstream = upstream
        self.config = config
        self.name = name
        self.proxy: Proxy | None = None
        self.ready = False
        self.attempt = 0
        n = len(PROXY_LOGS) // 2
        self.label = f"{name}-{n}"
        self.stdout_log = session_dir / "logs" / f"{self.label}.stdout.log"
        self.stderr_log = session_dir / "logs" / f"{self.label}.stderr.log"
        PROXY_LOGS.extend([self.stdout_log, self.stderr_log])
        self._launch()

    def _launch(self) -> None:
        self.attempt += 1
        port, admin = free_ports(2)
        args = [
            str(PROXY_BIN), "run",
            "--listen", f"127.0.0.1:{port}",
            "--admin", f"127.0.0.1:{admin}",
            "--upstream", self.upstream,
        ]
        if self.config is not None:
            cfg = self.session_dir / f"{self.label}.toml"
            cfg.write_text(self.config)
            args += ["--config", str(cfg)]
        rules = proxy_rules_dir(self.session_dir)
        if rules:
            args += ["--rules", rules]
        env = dict(os.environ)
        env.update({"STREAMMASK_PLACEHOLDER_KEY": PLACEHOLDER_KEY, "RUST_BACKTRACE": "1", "NO_COLOR": "1"})
        with open(self.stdout_log, "ab") as out, open(self.stderr_log, "ab") as err:
            proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, start_new_session=True)
        _PROCESSES.append(proc)
        self.proxy = Proxy(proc, port, admin, self.stdout_log, self.stderr_log, self.label)

    def wait(self) -> Proxy:
        if self.ready:
            return self.proxy
        while True:
            proxy = self.proxy
            deadline = time.monotonic() + READY_TIMEOUT_S
            while time.monotonic() < deadline and proxy.proc.poll() is None:
                try:
                    if httpx.get(proxy.admin_url + "/readyz", timeout=1).status_code == 200:
                        # The admin listener may come up first: check the proxy port accepts
                        # (a TCP connect, so TLS listeners count too).
                        socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
                        self.ready = True
                        return proxy
                except (httpx.HTTPError, OSError):
                    pass
                time.sleep(0.05)
            _kill(proxy.proc)
            log = proxy.log_text()[-4000:]
            # An ephemeral port can be taken between picking and binding: try again.
            if not _is_addr_in_use(log) or self.attempt >= 3:
                raise RuntimeError(f"proxy {self.label} did not become ready:\n{log}")
            self._launch()

    def kill(self) -> None:
        if self.proxy:
            _kill(self.proxy.proc)


# Configurations the suite uses; `_prestart` launches the ones the selected tests need.
LIMITS_CONFIG = (
    "[server]\nmax_body_bytes = 4096\n\n"
    "[upstream]\nread_timeout_ms = 1000\n\n"
    "[masking]\nmax_sse_event_bytes = 4096\n"
)
_DEAD_PORT = free_port()  # nothing listens here: the upstream of `dead_proxy`
STANDARD_PROXIES = {
    "proxy": dict(name="default"),
    "limits_proxy": dict(name="limits", config=LIMITS_CONFIG),
    "dead_proxy": dict(name="dead-upstream", upstream=f"http://127.0.0.1:{_DEAD_PORT}"),
}


def pytest_collection_finish(session):
    session.config._streammask_needed = {
        name for item in session.items for name in getattr(item, "fixturenames", ())
    }


@pytest.fixture(scope="session")
def proxy_factory(session_dir, mock_server):
    """`proxy_factory(config=None, upstream=None, name="proxy", fresh=False)`: a ready proxy.
    Proxies with the same arguments are shared unless `fresh`."""
    launchers: dict[Any, ProxyLauncher] = {}
    everything: list[ProxyLauncher] = []

    def launch(config=None, upstream=None, name="proxy", fresh=False) -> ProxyLauncher:
        key = (config, upstream, name)
        current = launchers.get(key)
        if fresh or current is None or (current.ready and not current.proxy.alive()):
            current = ProxyLauncher(session_dir, upstream or mock_server.url, config, name)
            launchers[key] = current
            everything.append(current)
        return current

    def factory(config: str | None = None, upstream: str | None = None, name: str = "proxy", fresh: bool = False) -> Proxy:
        return launch(config, upstream, name, fresh).wait()

    factory.launch = launch
    yield factory
    for launcher in everything:
        launcher.kill()


@pytest.fixture(scope="session", autouse=True)
def _prestart(request, proxy_factory):
    """Launch, up front and in parallel, every standard proxy and the `rules examples` run the
    selected tests need: compiling the full rule pack takes several CPU-seconds each."""
    needed = getattr(request.config, "_streammask_needed", set())
    if "rule_examples" in needed:
        _examples_process(request.getfixturevalue("session_dir"))
    for fixture, spec in STANDARD_PROXIES.items():
        if fixture in needed:
            proxy_factory.launch(**spec)


@pytest.fixture(scope="module")
def idp():
    """A loopback OIDC identity provider (JWKS and discovery) for the module's JWT tests."""
    server = authkit.IdP()
    yield server
    server.close()


@pytest.fixture(scope="session")
def proxy(proxy_factory) -> Proxy:
    """The default proxy: the embedded rule pack (plus the suite's rules), in front of the mock."""
    return proxy_factory(**STANDARD_PROXIES["proxy"])


@pytest.fixture(scope="session")
def limits_proxy(proxy_factory) -> Proxy:
    """max_body_bytes = 4096, read_timeout_ms = 1000 and max_sse_event_bytes = 4096."""
    return proxy_factory(**STANDARD_PROXIES["limits_proxy"])


@pytest.fixture(scope="session")
def dead_proxy(proxy_factory) -> Proxy:
    """A proxy whose upstream refuses connections."""
    return proxy_factory(**STANDARD_PROXIES["dead_proxy"])


def make_client(proxy: Proxy, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=proxy.url, api_key=API_KEY, max_retries=0, timeout=kw.pop("timeout", 30.0), **kw
    )


@pytest.fixture
def client(proxy):
    c = make_client(proxy)
    yield c
    c.close()


@pytest.fixture
def http(proxy):
    """A raw httpx client on the default proxy."""
    with httpx.Client(base_url=proxy.url, timeout=30.0, headers={"x-api-key": API_KEY}) as c:
        yield c


# --- rules ---------------------------------------------------------------------------------------

_EXAMPLES: dict[str, Any] = {}


def _examples_process(session_dir: Path) -> None:
    if "proc" in _EXAMPLES:
        return
    cmd = [str(PROXY_BIN), "rules", "examples"]
    rules = proxy_rules_dir(session_dir)
    if rules:
        cmd += ["--rules", rules]
    out = session_dir / "rules-examples.jsonl"
    with open(out, "wb") as f, open(session_dir / "rules-examples.err", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=f, stderr=err, start_new_session=True)
    _PROCESSES.append(proc)
    _EXAMPLES.update(proc=proc, out=out)


@pytest.fixture(scope="session")
def rule_examples(session_dir) -> list[dict]:
    """Every line `streammask rules examples` prints, for the rules the proxies run with."""
    _examples_process(session_dir)
    proc = _EXAMPLES["proc"]
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise
    examples = []
    for line in _EXAMPLES["out"].read_text(errors="replace").splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            examples.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    for ex in examples:
        smtest.plant(*ex.get("secrets", []))
    return examples


@pytest.fixture(scope="session")
def tool_block_rules(rule_examples) -> set[str]:
    """The rules that may stop a tool call: the pack's `block` rules for tool input and the
    parsed shell rules (which decide for the regex rules they supersede in a command they read
    whole; one of them must stop curl | sh)."""
    regex = {ex["id"] for ex in rule_examples if ex["action"] == "block" and "tool_input" in ex["applies_to"]}
    assert regex, "the pack has tool-input block rules"
    parsed = {"shell-download-to-interpreter", "shell-recursive-delete-home",
              "shell-credential-exfiltration", "shell-history-disabled"}
    return regex | parsed
