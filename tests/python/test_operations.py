"""8. Operations: the admin endpoints through a graceful drain.

After SIGTERM, Pingora stops accepting on the proxy port at once and lets requests in flight
finish. The admin listener keeps answering meanwhile: /readyz turns 503 (so a load balancer
stops sending work), /healthz stays 200, and /metrics shows the stream still open.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx

from smtest import (
    API_KEY, PLACEHOLDER_KEY, PROXY_BIN, assert_anthropic_error, free_port, mock_script, user_request, wait_until,
)


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


def test_readyz_turns_503_while_the_proxy_drains_and_streams_finish(proxy_factory, mock_server):
    proxy = proxy_factory(name="drain", fresh=True)
    assert httpx.get(proxy.admin_url + "/readyz", timeout=5).status_code == 200
    # A stream that takes a few seconds: 20 events 150 ms apart.
    client, outcome = start_slow_stream(proxy, 60, 150)
    metrics = lambda: metrics_of(proxy)  # noqa: E731

    proxy.proc.send_signal(signal.SIGTERM)
    wait_until(
        lambda: httpx.get(proxy.admin_url + "/readyz", timeout=5).status_code == 503,
        timeout=10,
        what="/readyz to turn 503",
    )
    assert httpx.get(proxy.admin_url + "/readyz", timeout=5).text == "draining\n"
    assert httpx.get(proxy.admin_url + "/healthz", timeout=5).status_code == 200
    assert "streammask_active_streams 1" in metrics(), "the drain is visible while it lasts"
    # New connections to the proxy port are refused; the stream in flight completes.
    wait_until(lambda: _refused(proxy.port), timeout=10, what="the proxy port to close")
    client.join(timeout=60)
    assert outcome.get("status") == 200, outcome
    assert "event: message_stop" in outcome["body"], outcome["body"][-500:]
    wait_until(lambda: "streammask_active_streams 0" in metrics(), timeout=10, what="the stream to end")
    assert proxy.alive(), "the grace period keeps the process up"
    assert "panicked" not in proxy.log_text()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def test_sighup_without_an_upstream_key_keeps_streams_open(proxy_factory, mock_server):
    """SIGHUP's default action ends a process: a proxy with no upstream key to reload must
    still catch it, so an SRE's `kill -HUP` cuts no stream."""
    proxy = proxy_factory(name="sighup-no-key", fresh=True)
    client, outcome = start_slow_stream(proxy, 30, 100)
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: no upstream key to reload" in proxy.log_text(), 10, what="the SIGHUP log line")
    client.join(30)
    assert outcome["status"] == 200 and "message_stop" in outcome["body"]
    assert proxy.alive()
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        r = c.post("/v1/messages", json=user_request("after the hangup"), headers={"x-api-key": API_KEY})
    assert r.status_code == 200
    proxy.assert_healthy()


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
    port, admin = free_port(), free_port()
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
