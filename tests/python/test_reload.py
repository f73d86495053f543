"""Hot reload: SIGHUP, `POST /admin/reload` and `[server] watch` re-read the config file and the
rules directory and swap one new snapshot in; streams in flight finish on the one they started
with; a bad file keeps the running snapshot and counts an error.

Each test runs its own proxy on its own config file (the rules directory is named in the file,
not on the command line, as deployments do). A rule pack the reload will load is compiled once
beforehand by `streammask config check` on an identical staging directory, as an SRE validates a
change before rolling it out: the reload then loads the compiled databases from the cache
instead of compiling them (measured separately: bench/README.md).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

import conftest
from smtest import (
    API_KEY, PLACEHOLDER_KEY, PROXY_BIN, REPO, assert_anthropic_error, free_ports, mock_script, parse_sse, sse_text,
    user_request, wait_until,
)

ADMIN_TOKEN = "e2e-admin-token-for-reload-tests"
ADDED_RULE_ID = "e2e-reload-added"
ADDED_RULE = f"""
[[rules]]
id = "{ADDED_RULE_ID}"
description = "a rule a reload adds (synthetic token format)"
pattern = '''\\bRLD-[0-9A-F]{{24}}\\b'''
action = "mask"
examples = ["token RLD-0123456789ABCDEF01234567 here"]
negative_examples = ["RLD-0123"]
"""
# Matches the added rule only: the embedded pack leaves it alone (asserted before the reload).
RELOAD_TOKEN = "RLD-9F8E7D6C5B4A39281706F5E4"


class OwnProxy:
    """A proxy started on a config file of its own, with its rules directory in that file."""

    def __init__(self, tmp: Path, upstream: str, config: str, name: str, env: dict | None = None):
        self.dir = tmp
        self.rules = tmp / "rules"
        self.rules.mkdir(exist_ok=True)
        self.config_path = tmp / f"{name}.toml"
        self.port, self.admin_port = free_ports(2)
        self.upstream = upstream
        self.write_config(config)
        label = f"{name}-{len(conftest.PROXY_LOGS) // 2}"
        self.stdout_log = conftest_logs(tmp) / f"{label}.stdout.log"
        self.stderr_log = conftest_logs(tmp) / f"{label}.stderr.log"
        conftest.PROXY_LOGS.extend([self.stdout_log, self.stderr_log])
        # A value of None in `env` removes the variable.
        env = {**os.environ, "STREAMMASK_PLACEHOLDER_KEY": PLACEHOLDER_KEY, "NO_COLOR": "1",
               "E2E_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})}
        self.env = {name: value for name, value in env.items() if value is not None}
        with open(self.stdout_log, "ab") as out, open(self.stderr_log, "ab") as err:
            self.proc = subprocess.Popen(
                [str(PROXY_BIN), "run", "--config", str(self.config_path)],
                stdout=out, stderr=err, env=self.env, start_new_session=True,
            )
        conftest._PROCESSES.append(self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        wait_until(self._ready, timeout=conftest.READY_TIMEOUT_S, interval=0.1, what=f"{name} to start")

    def write_config(self, body: str) -> None:
        self.config_path.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\nadmin = "127.0.0.1:{self.admin_port}"\n'
            + body.replace("{RULES}", str(self.rules)).replace("{UPSTREAM}", self.upstream)
        )

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the proxy exited:\n{self.log_text()[-3000:]}")
        try:
            if httpx.get(self.admin_url + "/readyz", timeout=1).status_code != 200:
                return False
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            return True
        except (httpx.HTTPError, OSError):
            return False

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.stdout_log, self.stderr_log) if p.exists())

    def metrics(self) -> str:
        return httpx.get(self.admin_url + "/metrics", timeout=5).text

    def metric(self, series: str) -> float:
        match = re.search("^" + re.escape(series) + r" (\S+)$", self.metrics(), re.M)
        assert match, f"{series} is not exported"
        return float(match.group(1))

    def reload(self, token: str | None = ADMIN_TOKEN) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.post(self.admin_url + "/admin/reload", headers=headers, timeout=120)

    def rss_kib(self) -> int:
        status = (Path("/proc") / str(self.proc.pid) / "status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))

    def stop(self) -> None:
        conftest._kill(self.proc)


def conftest_logs(tmp: Path) -> Path:
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    return logs


BASE_CONFIG = """admin_token_env = "E2E_ADMIN_TOKEN"
[upstream]
url = "{UPSTREAM}"
[masking]
rules_dir = "{RULES}"
"""


def warm_cache(tmp: Path, rules: dict[str, str]) -> None:
    """Compile the pack `rules` make (embedded pack + these files) once, as `config check`
    does before a rollout, so the reload under test finds its databases in the cache."""
    staging = tmp / "staging-rules"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name, text in rules.items():
        (staging / name).write_text(text)
    config = tmp / "staging.toml"
    config.write_text(f'[masking]\nrules_dir = "{staging}"\n')
    out = subprocess.run([str(PROXY_BIN), "config", "check", str(config)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def send(proxy: OwnProxy, text: str) -> httpx.Response:
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        return c.post("/v1/messages", json=user_request(text), headers={"x-api-key": API_KEY})


def forwarded_text(mock, marker: str) -> str:
    bodies = [r["body"] for r in mock.messages() if marker in r["body"]]
    assert bodies, f"no request with {marker!r} reached the mock"
    return bodies[-1]


def slow_streams(proxy: OwnProxy, count: int, words: int, delay_ms: int) -> list[tuple[threading.Thread, dict]]:
    script = mock_script('{"kind":"text","text":"' + "word " * words + f'","delay_ms":{delay_ms},"max_delta":16}}')
    streams = []
    for _ in range(count):
        outcome: dict = {}

        def run(outcome=outcome) -> None:
            try:
                with httpx.Client(base_url=proxy.url, timeout=120) as c:
                    r = c.post("/v1/messages", json=user_request("stream slowly", stream=True),
                               headers={"x-api-key": API_KEY, "x-mock-script": script})
                    outcome["status"], outcome["body"] = r.status_code, r.content
            except httpx.HTTPError as error:
                outcome["error"] = repr(error)

        thread = threading.Thread(target=run)
        thread.start()
        streams.append((thread, outcome))
    return streams


def assert_streams_completed(streams: list[tuple[threading.Thread, dict]], words: int) -> None:
    """Every stream of `slow_streams` ended with 200, `message_stop` and all of its text."""
    for thread, result in streams:
        thread.join(timeout=90)
        assert result.get("status") == 200, result.get("error") or result
        events = parse_sse(result["body"])
        assert events[-1][0] == "message_stop", events[-3:]
        assert sse_text(events) == "word " * words, "a stream lost or changed text"


def test_a_reload_while_50_streams_are_in_flight_swaps_the_rules_and_cuts_no_stream(tmp_path, mock):
    proxy = OwnProxy(tmp_path, mock.url, BASE_CONFIG, "reload-streams")
    try:
        warm_cache(tmp_path, {"added.toml": ADDED_RULE})
        before = send(proxy, f"a token {RELOAD_TOKEN} before the reload")
        assert before.status_code == 200, before.text
        assert RELOAD_TOKEN in forwarded_text(mock, "before the reload"), "the embedded pack already masks it"
        checksum_before = re.search(r'streammask_rules_info\{checksum="([0-9a-f]+)"\} 1', proxy.metrics()).group(1)

        # 50 streams of ~95 events 100 ms apart: each lasts about 10 s.
        streams = slow_streams(proxy, 50, 300, 100)
        wait_until(lambda: "streammask_active_streams 50\n" in proxy.metrics(), timeout=30, what="50 streams open")
        (proxy.rules / "added.toml").write_text(ADDED_RULE)
        reloaded = proxy.reload()
        assert reloaded.status_code == 200, reloaded.text
        outcome = reloaded.json()
        assert outcome["result"] == "ok" and outcome["checksum"] != checksum_before, outcome
        assert proxy.metric("streammask_active_streams") == 50, "the reload happened while every stream was open"

        after = send(proxy, f"a token {RELOAD_TOKEN} after the reload")
        assert after.status_code == 200, after.text
        forwarded = forwarded_text(mock, "after the reload")
        assert RELOAD_TOKEN not in forwarded and f"[MASKED:{ADDED_RULE_ID}:" in forwarded, forwarded

        assert_streams_completed(streams, 300)
        assert proxy.metric('streammask_config_reloads_total{result="ok"}') == 1
        assert proxy.metric('streammask_config_reloads_total{result="error"}') == 0
        assert proxy.metric(f'streammask_rules_info{{checksum="{outcome["checksum"]}"}}') == 1
        assert f'checksum="{checksum_before}"' not in proxy.metrics(), "one rules_info series: the running pack"
        assert proxy.metric(f'streammask_findings_total{{action="mask",direction="request",rule="{ADDED_RULE_ID}"}}') == 1
        assert outcome["checksum"] in httpx.get(proxy.admin_url + "/readyz", timeout=5).text

        # A broken rule file: the reload is refused, the running pack keeps serving.
        (proxy.rules / "broken.toml").write_text(
            "[[rules]]\nid = \"half-written\"\ndescription = \"a rule saved half-way\"\n"
            "pattern = '''(unclosed'''\naction = \"mask\"\n"
        )
        refused = proxy.reload()
        assert refused.status_code == 422, refused.text
        message = assert_anthropic_error(refused.text, "invalid_request_error")["error"]["message"]
        assert "half-written" in message and "running configuration is kept" in message, message
        assert proxy.metric('streammask_config_reloads_total{result="error"}') == 1
        assert proxy.metric(f'streammask_rules_info{{checksum="{outcome["checksum"]}"}}') == 1
        still = send(proxy, f"a token {RELOAD_TOKEN} with a broken file on disk")
        assert still.status_code == 200
        assert f"[MASKED:{ADDED_RULE_ID}:" in forwarded_text(mock, "with a broken file on disk")
        assert "reload refused" in proxy.log_text()
        assert proxy.proc.poll() is None and "panicked" not in proxy.log_text()
    finally:
        proxy.stop()


def test_reload_is_authenticated_and_refuses_settings_only_a_restart_applies(tmp_path, mock, proxy):
    # The suite's default proxy configures no admin token: reloading over HTTP is off.
    off = httpx.post(proxy.admin_url + "/admin/reload", timeout=10)
    assert off.status_code == 403
    assert "server.admin_token" in assert_anthropic_error(off.text, "permission_error")["error"]["message"]

    own = OwnProxy(tmp_path, mock.url, BASE_CONFIG, "reload-auth")
    try:
        for token in (None, "not-the-admin-token", ADMIN_TOKEN[:-1]):
            r = own.reload(token)
            assert r.status_code == 401, r.text
            assert ADMIN_TOKEN not in r.text
            assert_anthropic_error(r.text, "authentication_error")
        wrong_method = httpx.get(own.admin_url + "/admin/reload", timeout=10)
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        assert own.metric('streammask_config_reloads_total{result="ok"}') == 0

        own.write_config(BASE_CONFIG + "[log]\nformat = \"json\"\n")
        refused = own.reload()
        assert refused.status_code == 422
        assert "[log] changed: only a restart applies it" in refused.json()["error"]["message"]
        assert own.metric('streammask_config_reloads_total{result="error"}') == 1

        # What a reload may change, it changes: here a request body limit.
        own.write_config(BASE_CONFIG.replace("[upstream]", "max_body_bytes = 2048\n[upstream]"))
        assert own.reload().status_code == 200
        big = send(own, "x" * 4096)
        assert big.status_code == 413, big.text
    finally:
        own.stop()


def test_sighup_and_the_file_watch_reload_the_rules(tmp_path, mock):
    warm_cache(tmp_path, {"added.toml": ADDED_RULE})
    config = BASE_CONFIG.replace("[upstream]", "watch = true\nwatch_debounce_ms = 300\n[upstream]")
    watched = OwnProxy(tmp_path, mock.url, config, "reload-watch")
    try:
        (watched.rules / "added.toml").write_text(ADDED_RULE)
        wait_until(lambda: watched.metric('streammask_config_reloads_total{result="ok"}') == 1, timeout=60,
                   interval=0.2, what="the watch to reload")
        assert send(watched, f"{RELOAD_TOKEN} watched").status_code == 200
        assert f"[MASKED:{ADDED_RULE_ID}:" in forwarded_text(mock, "watched")
        # A file that stays the same is not reloaded again.
        time.sleep(1.5)
        assert watched.metric('streammask_config_reloads_total{result="ok"}') == 1

        # SIGHUP: the rule goes away again.
        (watched.rules / "added.toml").unlink()
        watched.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: 'trigger="SIGHUP"' in watched.log_text() or "trigger=SIGHUP" in watched.log_text(),
                   timeout=60, what="the SIGHUP reload")
        assert send(watched, f"{RELOAD_TOKEN} after the hangup").status_code == 200
        assert RELOAD_TOKEN in forwarded_text(mock, "after the hangup")
        assert watched.proc.poll() is None
    finally:
        watched.stop()


def test_a_hundred_reloads_leak_no_memory(tmp_path, mock):
    proxy = OwnProxy(tmp_path, mock.url, BASE_CONFIG, "reload-memory")
    try:
        (proxy.rules / "added.toml").write_text(ADDED_RULE)
        warm_cache(tmp_path, {"added.toml": ADDED_RULE})
        for _ in range(20):
            assert proxy.reload().status_code == 200
        assert send(proxy, "warm").status_code == 200
        settled = proxy.rss_kib()
        for _ in range(100):
            assert proxy.reload().status_code == 200
        grown = proxy.rss_kib() - settled
        # A leak of the old snapshot (databases, regexes, policy: megabytes each) would show as
        # hundreds of megabytes; allocator noise is a few.
        assert grown < 16 * 1024, f"RSS grew by {grown} KiB over 100 reloads"
        assert proxy.metric('streammask_config_reloads_total{result="ok"}') == 120
        assert send(proxy, f"{RELOAD_TOKEN} still").status_code == 200
        assert f"[MASKED:{ADDED_RULE_ID}:" in forwarded_text(mock, "still")
    finally:
        proxy.stop()


def test_dictionaries_and_protected_code_reload_with_the_rules(tmp_path, mock):
    """A term added to a dictionary file and a file added to a protected tree count from the
    reload on (issue 20: they reload with the rules)."""
    from test_org_data import dense_start, excerpt, reindent

    terms = tmp_path / "codenames.txt"
    terms.write_text("# code names\nBluefinch Atlas\n")
    tree = tmp_path / "protected"
    tree.mkdir()
    source = REPO / "loadtest" / "mock" / "src" / "sse.rs"
    config = BASE_CONFIG + (
        f'[[dictionaries]]\nid = "codenames"\npath = "{terms}"\n\n'
        f'[[protected_code]]\nid = "tree"\npaths = ["{tree}"]\naction = "block"\n'
    )
    (tree / "placeholder.rs").write_text("fn main() {}\n")
    proxy = OwnProxy(tmp_path, mock.url, config, "reload-org-data")
    try:
        start = dense_start(source, 15)
        pasted = "Why does this fail?\n\n```rust\n" + reindent(excerpt(source, start, 15)) + "\n```\n"
        assert send(proxy, pasted).status_code == 200, "not protected yet"
        assert send(proxy, "ship Quartzline Harbor today").status_code == 200
        assert "Quartzline Harbor" in forwarded_text(mock, "today"), "not a term yet"

        terms.write_text("# code names\nBluefinch Atlas\nQuartzline Harbor\n")
        (tree / "sse.rs").write_text(source.read_text())
        assert proxy.reload().status_code == 200

        assert send(proxy, "ship Quartzline Harbor tomorrow").status_code == 200
        forwarded = forwarded_text(mock, "tomorrow")
        assert "Quartzline Harbor" not in forwarded and "[MASKED:dict-codenames:" in forwarded, forwarded
        refused = send(proxy, pasted)
        assert refused.status_code == 403, refused.text
        assert "protected-code-tree" in refused.json()["error"]["message"]
    finally:
        proxy.stop()
