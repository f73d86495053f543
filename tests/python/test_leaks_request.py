"""Leak paths in the request direction outside the body: the headers that go upstream, the query
string and the path, and what the audit record copies from a request. None of them can carry a
placeholder, so a finding there refuses the request (400, or 403 for a `block` rule) and nothing
reaches the upstream."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import pytest

import conftest
from conftest import make_client
from smtest import API_KEY, GITHUB_TOKEN, AWS_KEY_ID, assert_anthropic_error, plant, user_request

# A third synthetic token, for this module only.
HEADER_TOKEN = "ghp_HdrL34kT0k3nAbCdEfGhIjKlMnOpQrStUv01"
plant(HEADER_TOKEN)


def _refused(r: httpx.Response, where: str, secret: str) -> None:
    assert r.status_code == 400, r.text
    assert_anthropic_error(r.content, "invalid_request_error")
    message = r.json()["error"]["message"]
    assert where in message, message
    assert "github-pat-classic" in message or "aws" in message, message
    assert secret not in r.text


@pytest.mark.parametrize(
    "name, value",
    [
        ("x-trace-note", HEADER_TOKEN),
        ("user-agent", f"my-wrapper/1.0 token={HEADER_TOKEN}"),
        ("anthropic-beta", f"claude-code-20250219,{HEADER_TOKEN}"),
        ("x-claude-code-session-id", HEADER_TOKEN),
        ("x-custom-aws", AWS_KEY_ID),
    ],
)
def test_a_secret_in_a_forwarded_header_refuses_the_request(proxy, mock, name, value):
    before = mock.stats()
    with httpx.Client(base_url=proxy.url, timeout=20) as c:
        r = c.post("/v1/messages", json=user_request("hi"), headers={"x-api-key": API_KEY, name: value})
    secret = HEADER_TOKEN if HEADER_TOKEN in value else AWS_KEY_ID
    _refused(r, f"header `{name}`", secret)
    assert mock.stats()["requests"] == before["requests"], "a refused request reached the upstream"


def test_custom_headers_through_the_sdk_are_scanned(proxy, mock):
    """Claude Code users add headers with ANTHROPIC_CUSTOM_HEADERS; SDK users with
    default_headers. Both reach the proxy as ordinary request headers."""
    with make_client(proxy, default_headers={"X-Team-Token": GITHUB_TOKEN}) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(**user_request("hello"))
    assert "header `x-team-token`" in str(info.value)
    assert GITHUB_TOKEN not in str(info.value)
    assert mock.messages() == []


@pytest.mark.parametrize(
    "target",
    [
        f"/v1/messages?beta=true&note={HEADER_TOKEN}",
        "/v1/messages?note=" + HEADER_TOKEN.replace("_", "%5F"),
        "/v1/messages?note=" + "".join(f"%{b:02X}" for b in HEADER_TOKEN.encode()),
    ],
)
def test_a_secret_in_the_query_string_refuses_the_request(proxy, mock, target):
    with httpx.Client(base_url=proxy.url, timeout=20) as c:
        r = c.post(target, json=user_request("hi"), headers={"x-api-key": API_KEY})
    _refused(r, "query string", HEADER_TOKEN)
    assert mock.messages() == []


def test_clean_metadata_goes_upstream_unchanged(proxy, mock):
    """What Claude Code sends (?beta=true, many anthropic-beta values, its session id, a
    user-agent) is clean and forwarded byte for byte."""
    headers = {
        "x-api-key": API_KEY,
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
        "user-agent": "claude-cli/2.0.8 (external, cli)",
        "x-claude-code-session-id": "0f3c2a9e-1b7d-4c55-9e2a-6d1f00c0ffee",
        "x-app": "cli",
    }
    with httpx.Client(base_url=proxy.url, timeout=20) as c:
        r = c.post("/v1/messages?beta=true", json=user_request("hi"), headers=headers)
    assert r.status_code == 200, r.text
    [received] = mock.messages()
    assert received["query"] == "beta=true", received
    for name, value in headers.items():
        if name == "x-api-key":
            continue
        assert mock.header(received, name) == value, name


@pytest.fixture(scope="module")
def audited(proxy_factory, session_dir):
    audit = session_dir / "leaks-audit" / "audit.jsonl"
    audit.parent.mkdir(exist_ok=True)
    config = f'[audit]\nsink = "file"\npath = "{audit}"\ntranscripts = true\n'
    proxy = proxy_factory(config=config, name="leaks-audit", fresh=True)
    conftest.AUDIT_OUTPUTS.append(audit)
    return proxy, audit


def _records(audit, request_id: str) -> list[dict]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if audit.exists():
            found = [
                json.loads(line)
                for line in audit.read_text().splitlines()
                if line.strip() and json.loads(line)["request_id"] == request_id
            ]
            if found:
                return found
        time.sleep(0.05)
    raise AssertionError(f"no audit record for {request_id}")


def test_the_audit_record_keeps_no_secret_from_request_metadata(audited, mock):
    proxy, audit = audited
    with httpx.Client(base_url=proxy.url, timeout=20) as c:
        r = c.post(
            "/v1/messages",
            json=user_request("hi"),
            headers={"x-api-key": API_KEY, "x-claude-code-session-id": HEADER_TOKEN},
        )
        assert r.status_code == 400, r.text
        [record] = _records(audit, r.headers["x-streammask-request-id"])
        assert record.get("session_id") is None
        assert record["decision"] == "blocked", record
        assert record["blocked_rule"] == "github-pat-classic"
        assert [f["path"] for f in record["findings"]] == ["header x-claude-code-session-id"]
        # A clean id is kept.
        r = c.post(
            "/v1/messages",
            json=user_request("hi"),
            headers={"x-api-key": API_KEY, "x-claude-code-session-id": "session-0001"},
        )
        assert r.status_code == 200, r.text
        [record] = _records(audit, r.headers["x-streammask-request-id"])
        assert record["session_id"] == "session-0001"
    assert HEADER_TOKEN not in audit.read_text()


# --- the body, as the model reads it -----------------------------------------------------------

def _revealed(body: str) -> str:
    """Everything the upstream could read out of a body: every string, decoded once and (when it
    is itself JSON or escaped text) once more, and adjacent texts joined."""
    out: list[str] = []

    def walk(value):
        if isinstance(value, str):
            out.append(value)
            try:
                again = json.loads(f'"{value}"')
                out.append(again)
            except (ValueError, TypeError):
                pass
            try:
                out.append(json.dumps(json.loads(value)))
            except (ValueError, TypeError):
                pass
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for k, v in value.items():
                out.append(k)
                walk(v)

    decoded = json.loads(body)
    walk(decoded)
    texts = []
    for message in decoded.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "text":
                texts.append(block["text"])
            if block.get("type") == "tool_result":
                inner = block.get("content")
                texts += [inner] if isinstance(inner, str) else [b.get("text", "") for b in inner or []]
    return "\n".join(out) + "\n" + "".join(texts)


T = HEADER_TOKEN
A, B = T[:15], T[15:]
BODY_CASES = {
    "php-escaped-slashes": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": json.dumps({"url": "https:\\/\\/x\\/" + T})}]},
    "dotnet-unicode-escapes": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"k":"' + "".join("\\u%04X" % ord(c) for c in T) + '"}'}]},
    "after-literal-backslash-n": {"role": "user", "content": "log: line1\\n" + T + "\\tdone"},
    "python-repr": {"role": "user", "content": repr({"token": "x\n" + T})},
    "split-across-text-blocks": {"role": "user", "content": [{"type": "text", "text": "key " + A}, {"type": "text", "text": B + " end"}]},
    "split-across-tool-result-blocks": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "out " + A}, {"type": "text", "text": B}]}]},
    "truncated-at-string-end": {"role": "user", "content": "the token is " + T[:30]},
    "truncated-with-marker": {"role": "user", "content": "GITHUB_TOKEN=" + T[:32] + "… [truncated]"},
    "word-glued": {"role": "user", "content": "export TOKEN_" + T + "x"},
}


@pytest.mark.parametrize("case", list(BODY_CASES))
def test_a_secret_in_the_body_is_masked_in_the_form_the_model_reads(proxy, mock, http, case):
    body = {"model": "claude-opus-4-8", "max_tokens": 16, "messages": [BODY_CASES[case]]}
    r = http.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    [received] = mock.messages()
    revealed = _revealed(received["body"])
    for secret in (T, T[4:24], B if len(B) >= 20 else T):
        assert secret not in revealed, (case, revealed[:2000])
    assert "[MASKED:" in received["body"], received["body"][:2000]


def test_split_across_consecutive_user_turns(proxy, mock, http):
    body = {"model": "claude-opus-4-8", "max_tokens": 16, "messages": [
        {"role": "user", "content": "first part " + A},
        {"role": "user", "content": B + " second part"},
    ]}
    r = http.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    [received] = mock.messages()
    forwarded = json.loads(received["body"])["messages"]
    joined = forwarded[0]["content"] + forwarded[1]["content"]
    assert T not in joined and B not in joined, joined
