"""8. TLS in and out: the listener terminates TLS (HTTP/1.1 and HTTP/2 by ALPN, h2c optional),
start-up fails clearly on a bad certificate or key, and the proxy verifies the upstream's
certificate (custom CA, SNI) and refuses one that does not verify.

Certificates come from a test CA generated here (authkit.CA); the mock upstream sits behind a
loopback TLS front (authkit.TlsFront) when the upstream must speak TLS.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import time
import warnings

import anthropic
import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import httpx2  # the anthropic SDK's HTTP client package
import pytest

import authkit
import smtest
from smtest import GITHUB_TOKEN, has_placeholder_for, message_text, user_request


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = authkit.CA()
    (d / "ca.pem").write_bytes(ca.pem())
    cert, key = authkit.write_server_cert(ca, d, "proxy")
    stranger = authkit.CA("untrusted e2e CA")
    (d / "stranger-ca.pem").write_bytes(stranger.pem())
    return {"dir": d, "ca": ca, "ca_file": d / "ca.pem", "cert": cert, "key": key, "stranger": stranger}


@pytest.fixture(scope="module")
def tls_proxy(proxy_factory, pki):
    config = f'[server.tls]\ncert_file = "{pki["cert"]}"\nkey_file = "{pki["key"]}"\n'
    return proxy_factory(config=config, name="tls")


def https_url(proxy) -> str:
    return f"https://localhost:{proxy.port}"


def trust(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki["ca_file"]))


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_sdk_over_the_tls_listener(tls_proxy, mock, pki, http2):
    prompt = f"my token is {GITHUB_TOKEN}, say hi"
    expected = "HTTP/2" if http2 else "HTTP/1.1"
    with httpx2.Client(verify=trust(pki), http2=http2, timeout=30) as sdk_http:
        with anthropic.Anthropic(base_url=https_url(tls_proxy), api_key=smtest.API_KEY, http_client=sdk_http, max_retries=0) as client:
            raw = client.messages.with_raw_response.create(**user_request(prompt))
            assert raw.http_response.http_version == expected
            text = message_text(raw.parse())
            assert GITHUB_TOKEN not in text and has_placeholder_for(text, GITHUB_TOKEN), text
            with client.messages.stream(**user_request(prompt)) as stream:
                streamed = stream.get_final_text()
            assert GITHUB_TOKEN not in streamed and has_placeholder_for(streamed, GITHUB_TOKEN), streamed
    with httpx.Client(verify=trust(pki), http2=http2, timeout=30) as http:
        # The negotiated protocol, seen on a raw request on the same client.
        r = http.post(
            https_url(tls_proxy) + "/v1/messages",
            json=user_request("which protocol?", stream=True),
            headers={"x-api-key": smtest.API_KEY, "anthropic-version": "2023-06-01"},
        )
        assert r.status_code == 200, r.text
        assert r.http_version == expected
        assert "event: message_stop" in r.text
        if http2:
            # Connection-specific headers are illegal in HTTP/2 (the h2 client would reject them).
            assert "transfer-encoding" not in r.headers and "connection" not in r.headers
    for record in mock.messages():
        assert GITHUB_TOKEN not in record["body"]
    assert len(mock.messages()) == 3
    tls_proxy.assert_healthy()


def test_large_request_over_http2(tls_proxy, mock, pki):
    filler = "lorem ipsum dolor sit amet " * 80_000  # ~2 MiB, far beyond one h2 window
    body = user_request(filler + GITHUB_TOKEN)
    with httpx.Client(verify=trust(pki), http2=True, timeout=60) as http:
        r = http.post(https_url(tls_proxy) + "/v1/messages", json=body, headers={"x-api-key": smtest.API_KEY})
    assert r.status_code == 200 and r.http_version == "HTTP/2", r.text[:500]
    (record,) = mock.messages()
    assert len(record["body"]) > 2_000_000
    assert GITHUB_TOKEN not in record["body"] and has_placeholder_for(record["body"], GITHUB_TOKEN)


def test_tls_versions(tls_proxy, mock, pki):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = trust(pki)
        ctx.minimum_version = ctx.maximum_version = version
        with httpx.Client(verify=ctx, timeout=10) as http:
            with http.stream("GET", https_url(tls_proxy) + "/v1/models", headers={"x-api-key": smtest.API_KEY}) as r:
                assert r.status_code == 200
                negotiated = r.extensions["network_stream"].get_extra_info("ssl_object").version()
        assert negotiated == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


def test_untrusted_client_cannot_talk_to_the_listener(tls_proxy, mock, pki):
    with httpx.Client(timeout=10) as http:  # system roots only: the test CA is unknown
        with pytest.raises(httpx.ConnectError):
            http.get(https_url(tls_proxy) + "/v1/models")
    # TLS 1.1 and older are refused.
    ctx = trust(pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        with httpx.Client(verify=ctx, timeout=10) as http:
            with pytest.raises(httpx.ConnectError):
                http.get(https_url(tls_proxy) + "/v1/models")
    except ssl.SSLError:
        pass  # the local OpenSSL may not even offer TLS 1.1
    assert mock.stats()["requests"] == 0


def test_h2c(proxy_factory, mock):
    proxy = proxy_factory(config="[server]\nh2c = true\n", name="h2c")
    with httpx.Client(http1=False, http2=True, timeout=30) as http:  # prior knowledge
        r = http.post(proxy.url + "/v1/messages", json=user_request("over h2c", stream=True), headers={"x-api-key": smtest.API_KEY})
    assert r.status_code == 200, r.text
    assert r.http_version == "HTTP/2"
    assert "over h2c" in smtest.sse_text(smtest.parse_sse(r.content))
    # HTTP/1.1 still works on the same port.
    with httpx.Client(timeout=30) as http:
        r = http.post(proxy.url + "/v1/messages", json=user_request("over h1"), headers={"x-api-key": smtest.API_KEY})
    assert r.status_code == 200 and r.http_version == "HTTP/1.1"


def test_an_h2c_stream_reset_by_the_client_cancels_its_upstream_request_and_no_other(proxy_factory, mock):
    """A load balancer or an HTTP/2 client cancels one stream of a shared connection with
    RST_STREAM (a developer stopping Claude Code mid-answer): the proxy must drop that stream's
    upstream request at once, and only that one."""
    proxy = proxy_factory(config="[server]\nh2c = true\n", name="h2c-reset")
    mock.reset()
    # The one to cancel would stream for ~24 s; the one kept for ~4 s.
    scripts = [{"kind": "text", "text": "word " * words, "max_delta": 5, "delay_ms": 200, "split_writes": False}
               for words in (120, 20)]
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(conn.data_to_send())
    body = json.dumps(user_request("talk slowly", stream=True)).encode()
    streams = []
    for script in scripts:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{proxy.port}"),
                                (":path", "/v1/messages"), ("content-type", "application/json"),
                                ("x-api-key", smtest.API_KEY), ("anthropic-version", "2023-06-01"),
                                ("x-mock-script", smtest.mock_script(script))])
        conn.send_data(sid, body, end_stream=True)
        streams.append(sid)
    sock.sendall(conn.data_to_send())
    cancelled, kept = streams
    received = {sid: b"" for sid in streams}
    reset_at = ended = None
    deadline = time.monotonic() + 40
    while ended is None and time.monotonic() < deadline:
        data = sock.recv(65536)
        assert data, "the proxy closed the connection"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                received[event.stream_id] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == kept:
                ended = time.monotonic()
            elif isinstance(event, h2.events.StreamReset):
                pytest.fail(f"stream {event.stream_id} reset by the proxy (code {event.error_code})")
        if reset_at is None and received[cancelled] and received[kept]:
            conn.reset_stream(cancelled, h2.errors.ErrorCodes.CANCEL)
            reset_at = time.monotonic()
        sock.sendall(conn.data_to_send())
        if reset_at is not None and mock.stats()["aborted_streams"] == 0:
            assert time.monotonic() - reset_at < 3, "the cancelled stream's upstream request still runs"
    sock.close()
    # The other stream on the connection ran to its end, whole.
    assert ended is not None, "the stream that was not cancelled did not end"
    kept_events = smtest.parse_sse(received[kept])
    assert kept_events[-1][0] == "message_stop"
    assert smtest.sse_text(kept_events) == "word " * 20
    assert mock.stats()["aborted_streams"] == 1
    proxy.assert_healthy()


def run_proxy(config_path, timeout=240, upstream="http://127.0.0.1:9") -> subprocess.CompletedProcess:
    cmd = [
        str(smtest.PROXY_BIN), "run", "--config", str(config_path),
        "--listen", f"127.0.0.1:{smtest.free_port()}", "--admin", f"127.0.0.1:{smtest.free_port()}",
        "--upstream", upstream,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("case", ["missing-cert", "missing-key", "mismatched", "not-pem"])
def test_bad_certificate_or_key_fails_startup_clearly(pki, tmp_path, case):
    other_cert, other_key = authkit.write_server_cert(pki["ca"], tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not PEM\n")
    cert, key, expect = {
        "missing-cert": (tmp_path / "nope.crt", pki["key"], r"server\.tls\.cert_file: cannot read .*nope\.crt"),
        "missing-key": (pki["cert"], tmp_path / "nope.key", r"server\.tls\.key_file: cannot read .*nope\.key"),
        "mismatched": (pki["cert"], other_key, r"server\.tls\.key_file: .*other\.key is not the private key of the certificate"),
        "not-pem": (junk, pki["key"], r"server\.tls\.cert_file: .*junk\.pem holds no PEM certificate"),
    }[case]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[server.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n')
    out = run_proxy(cfg, timeout=60)
    assert out.returncode != 0
    assert re.search(expect, out.stderr), out.stderr[-2000:]
    assert "panicked" not in out.stderr
    # No key material in the message.
    assert "PRIVATE KEY" not in out.stderr and "BEGIN" not in out.stderr


@pytest.mark.parametrize("case", ["missing", "not-pem"])
def test_bad_upstream_ca_file_fails_startup_clearly(tmp_path, case):
    ca = tmp_path / "ca.pem"
    if case == "not-pem":
        ca.write_text("not a certificate\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[upstream]\nca_file = "{ca}"\n')
    out = run_proxy(cfg, upstream="https://localhost:9")
    assert out.returncode != 0
    expect = "cannot read" if case == "missing" else "holds no PEM certificate"
    assert re.search(rf"upstream\.ca_file: .*{expect}", out.stderr), out.stderr[-2000:]
    assert "panicked" not in out.stderr


# --- upstream TLS ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fronts(mock_server, pki):
    d = pki["dir"]
    good = authkit.TlsFront(*authkit.write_server_cert(pki["ca"], d, "upstream", dns=("localhost",), ips=()), mock_server.port)
    untrusted = authkit.TlsFront(*authkit.write_server_cert(pki["stranger"], d, "untrusted", dns=("localhost",), ips=()), mock_server.port)
    wrong_name = authkit.TlsFront(*authkit.write_server_cert(pki["ca"], d, "wrong-name", dns=("api.example.com",), ips=()), mock_server.port)
    yield {"good": good, "untrusted": untrusted, "wrong_name": wrong_name}
    for f in (good, untrusted, wrong_name):
        f.close()


def test_proxy_talks_tls_to_the_upstream_with_a_custom_ca(proxy_factory, mock, pki, fronts):
    front = fronts["good"]
    proxy = proxy_factory(config=f'[upstream]\nca_file = "{pki["ca_file"]}"\n', upstream=f"https://localhost:{front.port}", name="upstream-tls")
    with anthropic.Anthropic(base_url=proxy.url, api_key=smtest.API_KEY, max_retries=0) as client:
        reply = client.messages.create(**user_request(f"token {GITHUB_TOKEN}"))
        assert has_placeholder_for(message_text(reply), GITHUB_TOKEN)
        with client.messages.stream(**user_request("streamed over TLS")) as s:
            assert "streamed over TLS" in s.get_final_text()
    assert len(mock.messages()) == 2
    assert front.handshakes_ok >= 1
    assert "localhost" in front.sni, f"no SNI sent: {front.sni}"
    proxy.assert_healthy()


@pytest.mark.parametrize("which", ["untrusted", "wrong_name"])
def test_proxy_refuses_an_upstream_certificate_that_does_not_verify(proxy_factory, mock, pki, fronts, which):
    front = fronts[which]
    proxy = proxy_factory(config=f'[upstream]\nca_file = "{pki["ca_file"]}"\n', upstream=f"https://localhost:{front.port}", name=f"upstream-{which}")
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        r = http.post("/v1/messages", json=user_request("hi"), headers={"x-api-key": smtest.API_KEY})
    assert r.status_code == 502, r.text
    smtest.assert_anthropic_error(r.content, "api_error")
    assert front.handshakes_ok == 0
    assert mock.stats()["requests"] == 0
    # The upstream error kind is recorded (Pingora's error type), e.g. InvalidCert.
    smtest.wait_until(lambda: re.search(r'upstream_error="?(InvalidCert|TLSHandshakeFailure)', proxy.log_text()), 5, what="upstream_error in the log")
    proxy.assert_healthy()


def test_system_roots_do_not_trust_the_test_ca(proxy_factory, mock, fronts):
    # Without ca_file the system roots apply: the test CA is not trusted.
    front = fronts["good"]
    proxy = proxy_factory(upstream=f"https://localhost:{front.port}", name="upstream-system-roots")
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        r = http.post("/v1/messages", json=user_request("hi"), headers={"x-api-key": smtest.API_KEY})
    assert r.status_code == 502, r.text
    assert mock.stats()["requests"] == 0


def test_jwks_fetched_over_https_with_a_custom_ca(proxy_factory, mock, pki, tmp_path):
    idp = authkit.IdP()
    front = authkit.TlsFront(*authkit.write_server_cert(pki["ca"], tmp_path, "idp", ips=()), idp.port)
    try:
        key = authkit.SigningKey("RS256")
        idp.publish(key)
        key_file = tmp_path / "upstream-key"
        key_file.write_text("sk-ant-api03-streammask-e2e-tls-idp-upstream-key")
        smtest.plant("sk-ant-api03-streammask-e2e-tls-idp-upstream-key")
        config = (
            f'[upstream]\napi_key_file = "{key_file}"\n'
            f'[auth]\nmode = "jwt"\nissuer = "{idp.issuer}"\naudience = "{authkit.AUDIENCE}"\n'
            f'jwks_url = "https://localhost:{front.port}{authkit.ISSUER_PATH}/keys"\nca_file = "{pki["ca_file"]}"\n'
        )
        proxy = proxy_factory(config=config, name="jwks-https")
        with httpx.Client(base_url=proxy.url, timeout=30) as http:
            r = http.post("/v1/messages", json=user_request("hi"), headers={"authorization": f"Bearer {authkit.token(key, idp.issuer)}"})
        assert r.status_code == 200, r.text
        assert idp.jwks_fetches == 1 and front.handshakes_ok == 1
        assert "localhost" in front.sni
    finally:
        front.close()
        idp.close()
