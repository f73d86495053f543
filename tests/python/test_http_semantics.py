"""3. HTTP semantics: large bodies, byte-identical pass-through, encodings, headers, opaque
fields, models, batches."""

from __future__ import annotations

import gzip
import json
import re
import socket
import time
import zlib

import httpx
import pytest

from conftest import Mock, make_client
from smtest import (
    mock_script,
    API_KEY,
    AWS_KEY_ID,
    assert_anthropic_error,
    GITHUB_TOKEN,
    GITHUB_TOKEN_2,
    MODEL,
    PG_PASSWORD,
    PG_URI,
    has_placeholder_for,
    http_request,
    message_text,
    parse_sse,
    placeholder_for,
    plant,
    raw_exchange,
    sse_text,
    user_request,
)

JSON = {"content-type": "application/json"}


def placeholder_in(text: str, secret: str) -> str:
    m = placeholder_for(secret).search(text)
    assert m, f"no placeholder for the secret in {text[:300]!r}…"
    return m.group(0)


def only_message(mock: Mock) -> dict:
    msgs = mock.messages()
    assert len(msgs) == 1, [r["path"] for r in mock.received()]
    return msgs[0]


def test_5_mib_body_is_masked_and_arrives_complete(proxy, mock, http):
    line = "The build log scrolls by: compiling crate 42 of 97, linking, running tests… ok\n"
    filler = line * (5 * 1024 * 1024 // len(line.encode()))
    tail = "Thanks for looking at this build log.\n" * 20
    text = filler + f"export GITHUB_TOKEN={GITHUB_TOKEN}\n" + tail
    body = json.dumps(user_request(text), ensure_ascii=False).encode()
    assert len(body) > 5 * 1024 * 1024
    mock.script({"kind": "text", "text": "ok"})
    r = http.post("/v1/messages", content=body, headers=JSON, timeout=60)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["content"][0]["text"] == "ok"
    assert r.headers.get("x-streammask-request-id")

    rec = only_message(mock)
    got = rec["body"]
    assert GITHUB_TOKEN not in got
    ph = placeholder_in(got, GITHUB_TOKEN)
    # Only the secret changed; everything else arrived, in full.
    assert json.loads(got)["messages"][0]["content"] == text.replace(GITHUB_TOKEN, ph)
    assert len(got.encode()) == len(body) - len(GITHUB_TOKEN) + len(ph)
    assert Mock.header(rec, "content-length") == str(len(got.encode()))


def test_body_without_findings_is_forwarded_byte_for_byte(proxy, mock, http):
    body = (
        b'{ "model" :  "claude-opus-4-8" ,\n\t"max_tokens":\t1024 ,\r\n'
        b'  "messages" : [ { "role":"user" , "content" : '
        b'"caf\\u00e9 na\\u00EFve \\ud83d\\ude00 \\/path\\/ tab\\t quote\\" back\\\\slash '
        b'r\xc3\xa9sum\xc3\xa9 \xe2\x82\xac \\u0041\\u0000x" } ],\n'
        b'  "metadata": {"user_id" :"e2e-user"}, "temperature": 1.0e0, "top_k" : 5 ,'
        b'  "stop_sequences": [ ] , "system" : [ {"type":"text","text":"be brief"} ] }  \n'
    )
    json.loads(body)  # valid JSON
    r = http.post("/v1/messages", content=body, headers=JSON)
    assert r.status_code == 200, r.text
    rec = only_message(mock)
    assert rec["body"].encode("utf-8") == body
    assert Mock.header(rec, "content-length") == str(len(body))


def test_count_tokens_is_masked(proxy, mock, client):
    result = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": f"my db is {PG_URI}, ok?"}]
    )
    assert result.input_tokens > 0
    recs = [r for r in mock.received() if r["path"] == "/v1/messages/count_tokens"]
    assert len(recs) == 1
    assert PG_PASSWORD not in recs[0]["body"]
    assert has_placeholder_for(recs[0]["body"], PG_PASSWORD)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_body_is_decoded_and_masked(proxy, mock, http, encoding):
    plain = json.dumps(user_request(f"token {GITHUB_TOKEN} and key {AWS_KEY_ID}")).encode()
    data = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    r = http.post("/v1/messages", content=data, headers={**JSON, "content-encoding": encoding})
    assert r.status_code == 200, r.text
    assert GITHUB_TOKEN not in r.text and AWS_KEY_ID not in r.text
    rec = only_message(mock)
    assert Mock.header(rec, "content-encoding") is None
    forwarded = json.loads(rec["body"])
    content = forwarded["messages"][0]["content"]
    assert GITHUB_TOKEN not in rec["body"] and AWS_KEY_ID not in rec["body"]
    assert has_placeholder_for(content, GITHUB_TOKEN) and has_placeholder_for(content, AWS_KEY_ID)
    assert Mock.header(rec, "content-length") == str(len(rec["body"].encode()))


def test_query_string_and_anthropic_and_unknown_headers_pass(proxy, mock, http):
    headers = {
        **JSON,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "interleaved-thinking-2025-05-14,context-management-2025-06-27",
        "x-e2e-unknown": "Value  With Spaces; and=symbols",
        "x-stainless-lang": "python",
    }
    body = json.dumps(user_request("hello")).encode()
    r = http.post("/v1/messages?beta=true&x=a%20b", content=body, headers=headers)
    assert r.status_code == 200, r.text
    rec = only_message(mock)
    assert rec["query"] == "beta=true&x=a%20b"
    for name, value in headers.items():
        assert Mock.headers_named(rec, name) == [value], name
    assert rec["body"].encode() == body


def _hop_by_hop_exchange(proxy, mock) -> dict:
    body = json.dumps(user_request("hello")).encode()
    raw = http_request(
        "POST",
        "/v1/messages",
        proxy.port,
        body,
        [
            ("Content-Type", "application/json"),
            ("x-api-key", API_KEY),
            ("Connection", "keep-alive, x-foo"),
            ("x-foo", "1"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
            ("x-kept", "yes"),
        ],
    )
    resp = raw_exchange(proxy.port, raw)
    assert resp is not None and resp.status == 200, resp and resp.body[:300]
    return only_message(mock)


def test_standard_hop_by_hop_headers_are_not_forwarded(proxy, mock):
    rec = _hop_by_hop_exchange(proxy, mock)
    names = {k.lower() for k, _ in rec["headers"]}
    for hop in ("keep-alive", "te", "proxy-connection", "trailer", "upgrade"):
        assert hop not in names, f"hop-by-hop header {hop} was forwarded"
    assert Mock.header(rec, "x-kept") == "yes"
    connection = (Mock.header(rec, "connection") or "").lower()
    assert "x-foo" not in connection


def test_headers_named_by_connection_are_not_forwarded(proxy, mock):
    """RFC 9110 7.6.1: a header the client lists in Connection is hop-by-hop too."""
    rec = _hop_by_hop_exchange(proxy, mock)
    assert Mock.header(rec, "x-foo") is None, "x-foo (listed in Connection) reached the upstream"


@pytest.mark.parametrize(
    "method,path,body,headers,status",
    [
        ("GET", "/v1/models", None, {}, 200),
        ("POST", "/v1/messages", json.dumps(user_request("hi")), JSON, 200),
        ("POST", "/v1/messages", json.dumps(user_request("hi", stream=True)), JSON, 200),
        ("GET", "/v1/nope", None, {}, 404),
        ("POST", "/v1/complete", "{}", JSON, 404),
        ("POST", "/v1/messages", "{not json", JSON, 400),
        ("POST", "/v1/messages", "", JSON, 400),
        ("POST", "/v1/messages", json.dumps(user_request("hi")), {"content-type": "text/plain"}, 415),
        ("POST", "/v1/messages", "x", {**JSON, "content-encoding": "compress"}, 415),
        ("POST", "/v1/messages", "not gzip", {**JSON, "content-encoding": "gzip"}, 400),
    ],
    ids=["models", "message", "stream", "unknown-path", "complete", "malformed", "empty",
         "text-plain", "unknown-encoding", "bad-gzip"],
)
def test_every_response_carries_a_request_id(proxy, mock, http, method, path, body, headers, status):
    r = http.request(method, path, content=body, headers=headers)
    assert r.status_code == status, r.text[:300]
    rid = r.headers.get("x-streammask-request-id")
    assert rid and re.fullmatch(r"[A-Za-z0-9_-]{8,}", rid), rid
    if status >= 400:
        err = r.json()
        assert err["type"] == "error" and err["error"]["type"] and err["error"]["message"]
    if status >= 400:
        assert mock.stats()["requests"] == 0, "a refused request reached the upstream"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream_gzip", [False, True], ids=["identity", "gzip"])
def test_client_accept_encoding_still_gets_masked_content(proxy, mock, stream, upstream_gzip):
    reply = f"Here you go: {GITHUB_TOKEN} and {PG_URI} done."
    mock.script({"kind": "text", "text": reply, "gzip": upstream_gzip})
    body = json.dumps(user_request("show me", stream=stream)).encode()
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        r = c.post(
            "/v1/messages",
            content=body,
            headers={**JSON, "accept-encoding": "gzip, br", "x-api-key": API_KEY},
        )
    assert r.status_code == 200, r.text[:300]
    assert r.headers.get("content-encoding") in (None, "identity", "gzip")
    raw = r.content  # httpx undoes gzip; anything else would stay unreadable and fail below
    text = sse_text(parse_sse(raw)) if stream else r.json()["content"][0]["text"]
    assert GITHUB_TOKEN not in raw.decode(errors="replace") and PG_PASSWORD not in raw.decode(errors="replace")
    assert has_placeholder_for(text, GITHUB_TOKEN) and has_placeholder_for(text, PG_PASSWORD)
    assert text.startswith("Here you go: ") and text.endswith(" done.")
    rec = only_message(mock)
    assert Mock.headers_named(rec, "accept-encoding") == ["identity"]


def _opaque_request(signature: str, redacted: str, image: str, pdf: str, text: str) -> dict:
    return {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [
            {"role": "user", "content": "first question"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Let me think.", "signature": signature},
                    {"type": "redacted_thinking", "data": redacted},
                    {"type": "text", "text": "first answer"},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}},
                    {"type": "text", "text": text},
                ],
            },
        ],
    }


CLEAN_SIGNATURE = "EqQBCkYIBxgCKkDZm9vYmFyYmF6aGVsbG8gd29ybGQ/+="
CLEAN_REDACTED = "EmwKAhgBEgycmVkYWN0ZWQgdGhpbmtpbmcgZGF0YQ=="
CLEAN_IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
CLEAN_PDF = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg=="


def test_clean_opaque_fields_are_forwarded_unaltered(proxy, mock, http):
    """Signatures, redacted thinking and base64 sources are scanned, and forwarded byte for byte
    when clean, even when the body is rewritten for a secret next to them."""
    request = _opaque_request(
        CLEAN_SIGNATURE, CLEAN_REDACTED, CLEAN_IMAGE, CLEAN_PDF, f"and the token is {GITHUB_TOKEN} ok"
    )
    r = http.post("/v1/messages", json=request)
    assert r.status_code == 200, r.text
    forwarded = json.loads(only_message(mock)["body"])
    assistant = forwarded["messages"][1]["content"]
    user = forwarded["messages"][2]["content"]
    assert assistant[0]["signature"] == CLEAN_SIGNATURE
    assert assistant[1]["data"] == CLEAN_REDACTED
    assert user[0]["source"]["data"] == CLEAN_IMAGE
    assert user[1]["source"]["data"] == CLEAN_PDF
    # ...while the ordinary text next to them was masked (the body was rewritten).
    assert GITHUB_TOKEN not in user[2]["text"] and has_placeholder_for(user[2]["text"], GITHUB_TOKEN)


@pytest.mark.parametrize(
    "field, path",
    [
        ("signature", "messages[1].content[0].signature"),
        ("redacted", "messages[1].content[1].data"),
        ("image", "messages[2].content[0].source.data"),
        ("pdf", "messages[2].content[1].source.data"),
    ],
)
def test_a_secret_in_an_opaque_field_refuses_the_request(proxy, mock, http, field, path):
    """A value that cannot carry a placeholder is never forwarded with a secret in it: the
    request is refused with a 400 naming the JSON path and the rule, never the value."""
    values = dict(signature=CLEAN_SIGNATURE, redacted=CLEAN_REDACTED, image=CLEAN_IMAGE, pdf=CLEAN_PDF)
    values[field] = f"{values[field][:12]}/{GITHUB_TOKEN}/{values[field][12:]}"
    request = _opaque_request(**values, text="clean text")
    r = http.post("/v1/messages", json=request)
    assert r.status_code == 400, r.text
    assert_anthropic_error(r.content, "invalid_request_error")
    message = r.json()["error"]["message"]
    assert f"`{path}`" in message and "github-pat-classic" in message, message
    assert GITHUB_TOKEN not in r.text
    assert mock.messages() == []


def test_models_pass_through(proxy, mock, client):
    direct = httpx.get(mock.url + "/v1/models").json()
    mock.reset()
    models = client.models.list()
    assert [m.id for m in models.data] == [m["id"] for m in direct["data"]]
    with httpx.Client(base_url=proxy.url, timeout=10) as c:
        r = c.get("/v1/models", headers={"x-api-key": API_KEY})
        assert r.json() == direct
        assert r.headers.get("x-streammask-request-id")
    assert client.models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5"


def _create_batch(client):
    return client.messages.batches.create(
        requests=[
            {
                "custom_id": "req-a",
                "params": {
                    "model": MODEL,
                    "max_tokens": 256,
                    "messages": [{"role": "user", "content": f"rotate {GITHUB_TOKEN} please"}],
                },
            },
            {
                "custom_id": "req-b",
                "params": {
                    "model": MODEL,
                    "max_tokens": 256,
                    "system": f"db: {PG_URI}",
                    "messages": [{"role": "user", "content": f"key {AWS_KEY_ID}"}],
                },
            },
        ]
    )


def test_batch_create_and_results_are_masked(proxy, mock, client):
    batch = _create_batch(client)
    assert batch.id.startswith("msgbatch_")
    recs = [r for r in mock.received() if r["path"] == "/v1/messages/batches"]
    assert len(recs) == 1
    sent = recs[0]["body"]
    for secret in (GITHUB_TOKEN, PG_PASSWORD, AWS_KEY_ID):
        assert secret not in sent
        assert has_placeholder_for(sent, secret)
    params = {i["custom_id"]: i["params"] for i in json.loads(sent)["requests"]}
    assert set(params) == {"req-a", "req-b"}

    # Results: one scripted reply per request line, both carrying secrets.
    mock.script(
        [
            {"kind": "text", "text": f"new token: {GITHUB_TOKEN_2}"},
            {"kind": "text", "text": f"your key {AWS_KEY_ID} and {PG_URI}"},
        ]
    )
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        r = c.get(f"/v1/messages/batches/{batch.id}/results", headers={"x-api-key": API_KEY})
    assert r.status_code == 200, r.text[:300]
    assert r.headers.get("x-streammask-request-id")
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert [line["custom_id"] for line in lines] == ["req-a", "req-b"]
    for secret in (GITHUB_TOKEN_2, AWS_KEY_ID, PG_PASSWORD):
        assert secret not in r.text
    texts = [line["result"]["message"]["content"][0]["text"] for line in lines]
    assert has_placeholder_for(texts[0], GITHUB_TOKEN_2)
    assert has_placeholder_for(texts[1], AWS_KEY_ID) and has_placeholder_for(texts[1], PG_PASSWORD)


def test_sdk_batch_results_go_through_the_proxy(proxy, mock, client):
    batch = _create_batch(client)
    mock.script([{"kind": "text", "text": f"new token: {GITHUB_TOKEN_2}"}, {"kind": "text", "text": "ok"}])
    results = list(client.messages.batches.results(batch.id))
    assert [r.custom_id for r in results] == ["req-a", "req-b"]
    text = message_text(results[0].result.message)
    assert GITHUB_TOKEN_2 not in text, "batch results reached the SDK unmasked"
    assert has_placeholder_for(text, GITHUB_TOKEN_2)
    retrieved = client.messages.batches.retrieve(batch.id)
    assert retrieved.results_url.startswith(proxy.url), retrieved.results_url


@pytest.mark.parametrize("direction", ["request", "response-json", "response-stream"])
def test_secret_used_as_a_json_key_is_masked(proxy, mock, http, direction):
    if direction == "request":
        body = user_request("hi", metadata={"user_id": "u1"}, tools=[
            {"name": "deploy", "description": "d", "input_schema": {"type": "object", "properties": {GITHUB_TOKEN: {"type": "string"}}}}
        ])
        r = http.post("/v1/messages", json=body)
        assert r.status_code == 200, r.text
        assert GITHUB_TOKEN not in only_message(mock)["body"], "a secret key reached the upstream"
    else:
        mock.script({"kind": "tool_use", "tool": {"name": "Bash", "input": {"command": "env", "env": {GITHUB_TOKEN: "1"}}}})
        r = http.post("/v1/messages", json=user_request("hi", stream=direction == "response-stream"))
        assert r.status_code == 200, r.text
        assert GITHUB_TOKEN not in r.text, "a secret key reached the client"


def test_concurrent_streams_are_masked_independently(proxy, mock):
    from concurrent.futures import ThreadPoolExecutor

    secrets = [f"ghp_{i:02d}" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1eF2x" for i in range(8)]
    assert all(len(s) == 40 for s in secrets)
    plant(*secrets)

    def one(secret: str) -> str:
        script = json.dumps({"kind": "text", "text": f"token {secret} end", "max_delta": 3})
        with make_client(proxy) as c:
            with c.messages.stream(**user_request("hi"), extra_headers={"x-mock-script": mock_script(script)}) as s:
                return message_text(s.get_final_message())

    with ThreadPoolExecutor(len(secrets)) as pool:
        texts = list(pool.map(one, secrets))
    for secret, text in zip(secrets, texts):
        ph = placeholder_in(text, secret)
        assert text == f"token {ph} end", text
    assert len({placeholder_for(s).pattern for s in secrets}) == len(secrets)


def test_placeholders_are_the_same_on_every_proxy(proxy, limits_proxy, mock):
    """Same key, same secret, same placeholder: on both proxies, in both directions."""
    seen = set()
    for p in (proxy, limits_proxy):
        mock.reset()
        with make_client(p) as c:
            reply = c.messages.create(**user_request(f"key {AWS_KEY_ID}"))
        seen.add(placeholder_in(only_message(mock)["body"], AWS_KEY_ID))
        seen.add(placeholder_in(message_text(reply), AWS_KEY_ID))
    assert len(seen) == 1, seen


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_thinking_block_and_signature_pass_while_text_is_masked(proxy, mock, client, stream):
    thinking = "Let me think about which file holds the deploy settings."
    mock.script({"kind": "thinking_text", "thinking": thinking, "text": f"Use {GITHUB_TOKEN} now."})
    request = user_request("hi")
    if stream:
        with client.messages.stream(**request) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**request)
    assert [b.type for b in message.content] == ["thinking", "text"]
    block = message.content[0]
    assert block.thinking == thinking
    assert len(block.signature) == 128  # the mock's fake signature, intact
    text = message.content[1].text
    assert GITHUB_TOKEN not in text
    assert text == f"Use {placeholder_in(text, GITHUB_TOKEN)} now."


@pytest.mark.parametrize("informational", [[100], [103], [100, 103, 103]], ids=["100", "103", "several"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_informational_answers_before_the_final_one_are_skipped(proxy, mock, client, informational, stream):
    """An upstream `100 Continue` or `103 Early Hints` before the real response once panicked
    the request task inside Pingora's body reader and the client got nothing. They are skipped;
    the final answer is masked and relayed as usual."""
    script = {"kind": "text", "text": f"here: {GITHUB_TOKEN}", "informational": informational}
    request = user_request("hi")
    if stream:
        with client.messages.stream(**request, extra_headers={"x-mock-script": mock_script(script)}) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**request, extra_headers={"x-mock-script": mock_script(script)})
    text = message_text(message)
    assert GITHUB_TOKEN not in text and has_placeholder_for(text, GITHUB_TOKEN), text
    proxy.assert_healthy()


def test_the_response_head_is_not_held_for_a_slow_first_event(proxy, mock):
    """The proxy writes the response head together with the first events when they are already
    there (one write, one wake-up of the client), but never waits for them: when the upstream
    sends its head and then thinks before its first event, the client has the status and
    headers while the stream is still silent."""
    head_delay = 3.0
    script = {"kind": "text", "text": "hello there", "head_delay_ms": int(head_delay * 1000),
              "split_writes": False}
    body = json.dumps(user_request("hi", stream=True)).encode()
    request = http_request("POST", "/v1/messages", proxy.port, body,
                           [("content-type", "application/json"), ("anthropic-version", "2023-06-01"),
                            ("x-mock-script", mock_script(script))])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as s:
        started = time.monotonic()
        s.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            data = s.recv(65536)
            assert data, f"the proxy closed the connection inside the head: {received[:200]!r}"
            received += data
        head_after = time.monotonic() - started
        head, _, early_body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert head_after < head_delay - 0.5, (
            f"the head came {head_after:.2f} s after the request: the proxy held it for the "
            f"first event (the upstream sent its head at once and its first event {head_delay} s later)")
        assert b"message_start" not in early_body, early_body
        rest = read_rest_chunked(s, early_body)
    assert sse_text(parse_sse(rest)) == "hello there"


def read_rest_chunked(sock: socket.socket, buf: bytes) -> bytes:
    """The rest of a chunked body whose first bytes are `buf`, de-chunked."""
    body = b""
    while True:
        while b"\r\n" not in buf:
            data = sock.recv(65536)
            assert data, "the body ended before its last chunk"
            buf += data
        size_line, _, buf = buf.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(buf) < size + 2:
            data = sock.recv(65536)
            assert data, "the body ended inside a chunk"
            buf += data
        body += buf[:size]
        buf = buf[size + 2:]
        if size == 0:
            return body
