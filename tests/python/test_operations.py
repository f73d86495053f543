"""8. Operations: the admin endpoints through a graceful drain.

After SIGTERM, Pingora stops accepting on the proxy port at once and lets requests in flight
finish. The admin listener keeps answering meanwhile: /readyz turns 503 (so a load balancer
stops sending work), /healthz stays 200, and /metrics shows the stream still open.
"""

from __future__ import annotations

import signal
import socket
import threading

import httpx

from smtest import API_KEY, user_request, wait_until, mock_script


def start_slow_stream(proxy, words: int, delay_ms: int) -> tuple[threading.Thread, dict]:
    """A streamed request whose reply takes a while (`words` words, events `delay_ms` apart),
    running on a thread; returns once the proxy counts it as an active stream. The outcome dict
    gets the status and the body when it ends."""
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
    wait_until(lambda: "streammask_active_streams 1" in metrics_of(proxy), timeout=10, what="the stream to start")
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
