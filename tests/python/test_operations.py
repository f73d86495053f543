"""8. Operations: the graceful drain, the graceful upgrade, SIGHUP and connection limits.

After SIGTERM, /readyz turns 503 at once (a load balancer stops sending work) while the proxy
port keeps accepting for `shutdown.readiness_delay_secs`; then the port closes and requests in
flight finish; the process exits 0 once none is open, and at `shutdown.grace_secs` at the
latest, ending streams still open with an `overloaded_error` event. The admin listener keeps
answering throughout: /healthz stays 200 and /metrics shows the streams finishing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx

import conftest
from smtest import (
    API_KEY, PLACEHOLDER_KEY, PROXY_BIN, assert_anthropic_error, free_ports, mock_script, parse_sse,
    user_request, wait_until,
)
from test_reload import BASE_CONFIG, OwnProxy, assert_streams_completed, send, slow_streams


def start_slow_stream(proxy, words: int, delay_ms: int, active: int = 1) -> tuple[threading.Thread, dict]:
    """A streamed request whose reply takes a while (`words` words, events `delay_ms` apart),
    running on a thread; returns once the proxy counts `active` streams. The outcome dict gets
    the status and the body when it ends."""
    script = '{"kind":"text","text":"' + "word " * words + f'","delay_ms":{delay_ms},"max_delta":16}}'
    outcome: dict = {}

    def stream() -> None:
        with httpx.Client(base_url=proxy.url, timeout=60) as c:
            r = c.post(
                "/v1/messages",
                json=user_request("stream slowly", stream=True),
                headers={"x-api-key": API_KEY, "x-mock-script": mock_script(script)},
            )
            outcome["status"] = r.status_code
            outcome["body"] = r.text

    client = threading.Thread(target=stream)
    client.start()
    wait_until(lambda: f"streammask_active_streams {active}\n" in metrics_of(proxy), timeout=10, what="the stream to start")
    return client, outcome


def metrics_of(proxy) -> str:
    return httpx.get(proxy.admin_url + "/metrics", timeout=5).text


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def _audit_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sigterm_drains_20_streams_then_exits_0(tmp_path, mock):
    """/readyz turns 503 at once; the listener keeps accepting for the readiness delay, then
    refuses; the 20 streams in flight all complete; their audit records are written; the
    process exits 0 as soon as nothing is open, well before the grace period."""
    audit = tmp_path / "audit.jsonl"
    conftest.AUDIT_OUTPUTS.append(audit)
    config = BASE_CONFIG + f'[shutdown]\nreadiness_delay_secs = 3\ngrace_secs = 120\n[audit]\nsink = "file"\npath = "{audit}"\n'
    proxy = OwnProxy(tmp_path, mock.url, config, "drain")
    try:
        # ~40 events 150 ms apart: each stream lasts about 6 s.
        streams = slow_streams(proxy, 20, 120, 150)
        wait_until(lambda: "streammask_active_streams 20\n" in proxy.metrics(), timeout=30, what="20 streams open")
        signalled = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(proxy.admin_url + "/readyz", timeout=5).status_code == 503, timeout=1,
                   what="/readyz to turn 503 at once")
        assert httpx.get(proxy.admin_url + "/readyz", timeout=5).text == "draining\n"
        assert httpx.get(proxy.admin_url + "/healthz", timeout=5).status_code == 200
        # Within the readiness delay a request that arrives late is still served.
        late = send(proxy, "arrived during the readiness delay")
        assert late.status_code == 200, late.text
        assert time.monotonic() - signalled < 3, "the late request was not inside the delay"
        wait_until(lambda: _refused(proxy.port), timeout=10, what="the proxy port to close")
        closed_after = time.monotonic() - signalled
        assert closed_after >= 2.5, f"the listener closed {closed_after:.1f} s after SIGTERM, before the delay"
        assert "streammask_active_streams 20\n" in proxy.metrics(), "the drain is visible while it lasts"
        assert_streams_completed(streams, 120)
        assert proxy.proc.wait(timeout=30) == 0
        exited_after = time.monotonic() - signalled
        assert exited_after < 60, f"exited {exited_after:.0f} s after SIGTERM: it waited for the grace period"
        log = proxy.log_text()
        assert "drain complete" in log and "panicked" not in log, log[-3000:]
        # Every request's record reached the audit log before the exit.
        records = [r for r in _audit_records(audit) if r.get("kind", "request") == "request"]
        assert len(records) == 21, len(records)
    finally:
        proxy.stop()


def test_streams_open_at_the_grace_deadline_end_with_overloaded_error_and_the_process_exits_0(tmp_path, mock):
    config = BASE_CONFIG + "[shutdown]\nreadiness_delay_secs = 0\ngrace_secs = 3\n"
    proxy = OwnProxy(tmp_path, mock.url, config, "drain-deadline")
    try:
        # ~190 events 100 ms apart: far longer than the grace period.
        streams = slow_streams(proxy, 3, 600, 100)
        wait_until(lambda: "streammask_active_streams 3\n" in proxy.metrics(), timeout=30, what="3 streams open")
        signalled = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        for thread, result in streams:
            thread.join(timeout=30)
            assert result.get("status") == 200, result.get("error") or result
            name, data = parse_sse(result["body"])[-1]
            assert name == "error", result["body"][-300:]
            assert_anthropic_error(data, "overloaded_error")
            assert "message_stop" not in result["body"].decode()
        ended_after = time.monotonic() - signalled
        assert 2.5 <= ended_after < 10, f"the streams ended {ended_after:.1f} s after SIGTERM (grace 3 s)"
        assert proxy.proc.wait(timeout=15) == 0
        log = proxy.log_text()
        assert "shutdown.grace_secs reached" in log and "panicked" not in log, log[-3000:]
    finally:
        proxy.stop()


def test_sighup_without_an_upstream_key_reloads_and_keeps_streams_open(proxy_factory, mock_server):
    """SIGHUP's default action ends a process: the proxy catches it (and reloads), so an SRE's
    `kill -HUP` cuts no stream."""
    proxy = proxy_factory(name="sighup-no-key", fresh=True)
    client, outcome = start_slow_stream(proxy, 30, 100)
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in proxy.log_text(), 30, what="the reload log line")
    client.join(30)
    assert outcome["status"] == 200 and "message_stop" in outcome["body"]
    assert proxy.alive()
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        r = c.post("/v1/messages", json=user_request("after the hangup"), headers={"x-api-key": API_KEY})
    assert r.status_code == 200
    proxy.assert_healthy()


def test_graceful_upgrade_hands_the_listener_to_a_new_process_without_refusing_a_connection(tmp_path, mock):
    """`run --upgrade` then SIGQUIT to the old process: the new one takes over the listening
    socket, the old one finishes its stream and exits 0, and no connection is refused."""
    sock = tmp_path / "upgrade.sock"
    config = (
        BASE_CONFIG.replace("[upstream]", f'upgrade_sock = "{sock}"\n[upstream]')
        + "[shutdown]\nreadiness_delay_secs = 0\ngrace_secs = 60\n"
    )
    old = OwnProxy(tmp_path, mock.url, config, "upgrade-old")
    new = None
    try:
        [(stream, outcome)] = slow_streams(old, 1, 120, 100)
        wait_until(lambda: "streammask_active_streams 1\n" in old.metrics(), timeout=30, what="the stream to start")
        refused: list[str] = []
        served = {"count": 0}
        stop = threading.Event()

        def keep_calling() -> None:
            while not stop.is_set():
                try:
                    r = send(old, "during the upgrade")
                    if r.status_code == 200:
                        served["count"] += 1
                    else:
                        refused.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as error:
                    refused.append(repr(error))
                time.sleep(0.05)

        caller = threading.Thread(target=keep_calling)
        caller.start()
        log = tmp_path / "logs" / "upgrade-new.log"
        conftest.PROXY_LOGS.append(log)
        with open(log, "ab") as out:
            new = subprocess.Popen([str(PROXY_BIN), "run", "--config", str(old.config_path), "--upgrade"],
                                   stdout=out, stderr=subprocess.STDOUT, env=old.env, start_new_session=True)
        conftest._PROCESSES.append(new)
        wait_until(sock.exists, timeout=60, what="the new process to wait for the sockets")
        old.proc.send_signal(signal.SIGQUIT)
        assert old.proc.wait(timeout=60) == 0, old.log_text()[-3000:]
        stream.join(timeout=30)
        assert outcome.get("status") == 200 and parse_sse(outcome["body"])[-1][0] == "message_stop", outcome
        time.sleep(1)
        stop.set()
        caller.join(timeout=30)
        assert new.poll() is None, log.read_text()[-3000:]
        assert not refused, refused[:3]
        assert served["count"] > 20
        assert httpx.get(old.admin_url + "/readyz", timeout=5).status_code == 200, "the new process answers"
        assert send(old, "after the upgrade").status_code == 200
    finally:
        old.stop()
        if new is not None:
            conftest._kill(new)


def test_requests_beyond_max_connections_get_a_503_overloaded_error_and_slots_come_back(proxy_factory, mock_server):
    proxy = proxy_factory(config="[server]\nmax_connections = 2\n", name="max-connections", fresh=True)
    first, first_outcome = start_slow_stream(proxy, 30, 100)
    second, second_outcome = start_slow_stream(proxy, 30, 100, active=2)
    refused = httpx.post(
        proxy.url + "/v1/messages", json=user_request("one too many"), headers={"x-api-key": API_KEY}, timeout=10
    )
    assert refused.status_code == 503
    error = assert_anthropic_error(refused.text, "overloaded_error")["error"]
    assert "max_connections" in error["message"]
    for client, outcome in ((first, first_outcome), (second, second_outcome)):
        client.join(timeout=30)
        assert outcome["status"] == 200 and "message_stop" in outcome["body"], "streams in flight are untouched"
    # Both slots were given back when the streams ended.
    wait_until(lambda: "streammask_active_streams 0\n" in metrics_of(proxy), timeout=10, what="the streams to end")
    for _ in range(3):
        again = httpx.post(
            proxy.url + "/v1/messages", json=user_request("room again"), headers={"x-api-key": API_KEY}, timeout=10
        )
        assert again.status_code == 200, again.text


def test_start_up_raises_the_open_file_limit_for_max_connections(tmp_path, mock_server):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * 1000 + 256
    if hard < needed + 1:
        import pytest

        pytest.skip(f"the hard open-file limit ({hard}) is below what the test needs")
    config = tmp_path / "limits.toml"
    config.write_text("[server]\nmax_connections = 1000\n")
    port, admin = free_ports(2)
    log = tmp_path / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(PROXY_BIN), "run", "--config", str(config), "--listen", f"127.0.0.1:{port}",
             "--admin", f"127.0.0.1:{admin}", "--upstream", mock_server.url],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "STREAMMASK_PLACEHOLDER_KEY": PLACEHOLDER_KEY, "NO_COLOR": "1"},
            # Started as a distribution starts services: a soft limit of 512.
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard)),
        )
    try:
        wait_until(lambda: _ready(admin), timeout=30, what="the proxy to start")
        limits = (Path("/proc") / str(proc.pid) / "limits").read_text()
        line = next(l for l in limits.splitlines() if l.startswith("Max open files"))
        assert int(line.split()[3]) == needed, line
        text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text())
        assert "open-file limit" in text and f"open_files={needed}" in text and "was=512" in text, text[-2000:]
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _ready(admin: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
