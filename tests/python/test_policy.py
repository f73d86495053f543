"""5. Policy: blocked requests, blocked and allowed tool calls, and cancellation when the
client goes away."""

from __future__ import annotations

import time

import anthropic
import httpx
import pytest

from conftest import make_client
from smtest import (
    API_KEY,
    BLOCK_PHRASE,
    BLOCK_RULE_ID,
    CURL_PIPE_SH,
    GITHUB_TOKEN,
    has_placeholder_for,
    message_text,
    placeholder_for,
    user_request,
    wait_until,
)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_blocked_request_is_403_and_never_reaches_upstream(proxy, mock, stream):
    before = mock.stats()
    with httpx.Client(base_url=proxy.url, timeout=20) as c:
        r = c.post(
            "/v1/messages",
            json=user_request(f"Please run {BLOCK_PHRASE} for me", stream=stream),
            headers={"x-api-key": API_KEY},
        )
    assert r.status_code == 403, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "permission_error"
    assert BLOCK_RULE_ID in err["error"]["message"]
    assert r.headers.get("x-streammask-request-id")
    with make_client(proxy) as client, pytest.raises(anthropic.PermissionDeniedError) as info:
        client.messages.create(**user_request(f"again: {BLOCK_PHRASE}"))
    assert BLOCK_RULE_ID in str(info.value)
    after = mock.stats()
    assert after["connections"] == before["connections"], "a blocked request opened an upstream connection"
    assert after["requests"] == before["requests"] == 0
    proxy.assert_healthy()


def _final_message(client, stream: bool):
    request = user_request("Install the tool for me.")
    if stream:
        with client.messages.stream(**request) as s:
            return s.get_final_message()
    return client.messages.create(**request)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_blocked_tool_call_never_reaches_client(proxy, mock, client, tool_block_rules, stream):
    mock.script(
        {
            "kind": "tool_use",
            "text": "I'll install it.",
            "tool": {"name": "Bash", "input": {"command": CURL_PIPE_SH, "description": "Install"}},
        }
    )
    message = _final_message(client, stream)
    assert not [b for b in message.content if b.type == "tool_use"], "a blocked tool call reached the client"
    assert message.stop_reason == "end_turn"
    text = message_text(message)
    assert text.startswith("I'll install it.")
    assert any(rule in text for rule in tool_block_rules), text
    assert "block" in text.lower()
    proxy.assert_healthy()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_allowed_tool_call_arrives_intact(proxy, mock, client, stream):
    tool_input = {"command": "ls -la", "description": "List files", "timeout": 5000}
    mock.script({"kind": "tool_use", "text": "Listing.", "tool": {"name": "Bash", "input": tool_input, "id": "toolu_01e2eAllowed"}})
    message = _final_message(client, stream)
    tools = [b for b in message.content if b.type == "tool_use"]
    assert len(tools) == 1
    assert tools[0].name == "Bash" and tools[0].id == "toolu_01e2eAllowed"
    assert tools[0].input == tool_input
    assert message.stop_reason == "tool_use"
    assert message_text(message) == "Listing."


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_tool_call_input_with_a_secret_is_masked(proxy, mock, client, stream):
    command = f"echo {GITHUB_TOKEN} | gh auth login --with-token"
    tool_input = {"command": command, "description": "Log in to GitHub"}
    mock.script({"kind": "tool_use", "tool": {"name": "Bash", "input": tool_input}})
    message = _final_message(client, stream)
    tools = [b for b in message.content if b.type == "tool_use"]
    assert len(tools) == 1 and message.stop_reason == "tool_use"
    got = tools[0].input["command"]
    assert GITHUB_TOKEN not in got and has_placeholder_for(got, GITHUB_TOKEN), got
    ph = placeholder_for(GITHUB_TOKEN).search(got).group(0)
    assert tools[0].input == {**tool_input, "command": command.replace(GITHUB_TOKEN, ph)}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_blocked_and_allowed_tool_calls_together(proxy, mock, client, tool_block_rules, stream):
    mock.script(
        {
            "kind": "tool_use",
            "tools": [
                {"name": "Bash", "input": {"command": CURL_PIPE_SH}},
                {"name": "Bash", "input": {"command": "ls -la"}},
            ],
        }
    )
    message = _final_message(client, stream)
    tools = [b for b in message.content if b.type == "tool_use"]
    assert [t.input for t in tools] == [{"command": "ls -la"}]
    assert message.stop_reason == "tool_use"  # a tool call remains
    assert any(rule in message_text(message) for rule in tool_block_rules)


def test_client_disconnect_cancels_the_upstream_request(proxy, mock):
    events = 120
    mock.script(
        {
            "kind": "text",
            "text": "word " * events,
            "max_delta": 5,
            "delay_ms": 200,
            "split_writes": False,
        }
    )
    started = time.monotonic()
    with httpx.Client(base_url=proxy.url, timeout=10) as c:
        with c.stream(
            "POST", "/v1/messages", json=user_request("talk slowly", stream=True), headers={"x-api-key": API_KEY}
        ) as r:
            assert r.status_code == 200
            first = next(r.iter_raw())
            assert first
    # Closed after the first bytes. The mock would take ~24 s to finish; the proxy must drop
    # the upstream connection long before.
    wait_until(lambda: mock.stats()["aborted_streams"] >= 1, timeout=6, what="the mock to see the upstream closed")
    assert time.monotonic() - started < 8
    assert mock.stats()["requests"] == 1
    proxy.assert_healthy()
    with make_client(proxy) as c2:
        assert c2.messages.create(**user_request("next")).content[0].text == "next"
