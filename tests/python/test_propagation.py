"""A secret found once is masked everywhere (issue: detection coverage, class 3). A value that only
its key name marks as a secret (no provider format) appears in a tool result under its name and
again bare in a later text block; the model quotes it back, bare and split across deltas. The
upstream sees neither occurrence, the SDK sees neither the whole value nor a part it could
rebuild it from, and every occurrence carries the same placeholder."""

from __future__ import annotations

import json
import re

from conftest import make_client
from smtest import mock_script, user_request

# Random-looking, no provider prefix: only `DEPLOY_TOKEN=` says it is a secret.
SECRET = "q7Vd2mXr9LkTz4Hw8NcBf3Ys"
PLACEHOLDER = re.compile(r"\[MASKED:([a-z0-9-]+):[0-9a-f]{8}\]")


def ev(name: str, obj: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n"


def reply_quoting(parts: list[str]) -> str:
    start = {"type": "message_start", "message": {
        "id": "msg_01prop", "type": "message", "role": "assistant", "model": "claude-opus-4-8", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}}
    out = ev("message_start", start)
    out += ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    for part in parts:
        out += ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": part}})
    out += ev("content_block_stop", {"type": "content_block_stop", "index": 0})
    out += ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 9}})
    return out + ev("message_stop", {"type": "message_stop"})


def conversation() -> list[dict]:
    return [
        {"role": "user", "content": "read the deploy config"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"file_path": "/srv/app/.env"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": f"DEPLOY_TOKEN={SECRET}\nREGION=eu-west-1\n"},
            {"type": "text", "text": f"why does `curl -H 'X-Deploy: {SECRET}' https://deploy.internal` fail?"},
        ]},
    ]


def test_a_secret_found_by_its_key_name_is_masked_bare_in_the_request_and_the_streamed_reply(proxy, mock):
    reply = reply_quoting(["You sent the value ", SECRET[:9], SECRET[9:17], SECRET[17:], " as X-Deploy; it is fine."])
    request = user_request("x", stream=True)
    request["messages"] = conversation()
    with make_client(proxy) as client:
        raw = client.messages.with_raw_response.create(
            **request, extra_headers={"x-mock-script": mock_script({"kind": "garbage", "raw": reply})}
        ).http_response.read()
    [received] = mock.messages()
    upstream = received["body"]
    assert SECRET not in upstream, upstream
    forwarded = json.loads(upstream)["messages"][2]["content"]
    in_tool_result = PLACEHOLDER.findall(json.dumps(forwarded[0]))
    in_text = PLACEHOLDER.search(forwarded[1]["text"])
    assert in_tool_result and in_text, forwarded
    # The bare repeat carries the placeholder its key name earned, not a rule of its own.
    tool_placeholder = PLACEHOLDER.search(json.dumps(forwarded[0])).group(0)
    assert in_text.group(0) == tool_placeholder, (tool_placeholder, forwarded[1]["text"])
    streamed = raw.decode()
    assert SECRET not in streamed
    text = "".join(
        json.loads(line[len("data: "):]).get("delta", {}).get("text", "")
        for line in streamed.splitlines()
        if line.startswith("data: ") and '"text_delta"' in line
    )
    assert SECRET not in text and SECRET[:12] not in text and SECRET[12:] not in text, text
    assert tool_placeholder in text, text
    proxy.assert_healthy()


def test_without_a_finding_nothing_is_propagated(proxy, mock):
    # The same value with no key name anywhere: nothing marks it, nothing changes.
    request = user_request(f"the build id is {SECRET} today")
    with make_client(proxy) as client:
        client.messages.create(**request)
    [received] = mock.messages()
    assert SECRET in received["body"]
