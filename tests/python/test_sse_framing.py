"""Hand-made upstream SSE streams (via the mock's `garbage` kind, which sends raw bytes) in
every framing the SSE spec allows: the proxy must mask secrets in all of them, and the SDK must
parse what comes out."""

from __future__ import annotations

import json

import pytest

from conftest import make_client
from smtest import GITHUB_TOKEN, has_placeholder_for, message_text, parse_sse, sse_text, user_request, mock_script

T = GITHUB_TOKEN
START = {
    "type": "message_start",
    "message": {
        "id": "msg_01e2eFraming", "type": "message", "role": "assistant", "model": "claude-opus-4-8",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    },
}


def event(name: str, obj: dict, eol: str = "\n") -> str:
    return f"event: {name}{eol}data: {json.dumps(obj)}{eol}{eol}"


def stream(deltas: list[str], eol: str = "\n") -> str:
    s = event("message_start", START, eol)
    s += event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, eol)
    for text in deltas:
        s += event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}, eol)
    s += event("content_block_stop", {"type": "content_block_stop", "index": 0}, eol)
    s += event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 5}}, eol)
    s += event("message_stop", {"type": "message_stop"}, eol)
    return s


SPLIT = ["tok ", T[:10], T[10:25], T[25:], " end"]
ESCAPED = "".join("\\u%04x" % ord(c) for c in T)
CITATION = (
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
    '{"type":"citations_delta","citation":{"type":"char_location","cited_text":"tok ' + T + ' end",'
    '"document_index":0,"document_title":null,"start_char_index":0,"end_char_index":5}}}\n\n'
)
CASES = {
    "crlf": (stream(SPLIT, "\r\n"), True),
    "cr": (stream(SPLIT, "\r"), True),
    "multi-line-data": (stream(["tok ", T, " end"]).replace('"delta": {', '"delta":\ndata: {'), True),
    "escaped-secret": (stream(["tok ", T, " end"]).replace(T, ESCAPED), True),
    "comment-in-event": (stream(SPLIT).replace("event: content_block_delta", ": keep-alive\nevent: content_block_delta"), True),
    "no-space-after-colon": (stream(SPLIT).replace("data: ", "data:").replace("event: ", "event:"), True),
    "text-in-block-start": (
        stream([" end"]).replace('"content_block": {"type": "text", "text": ""}', f'"content_block": {{"type": "text", "text": "tok {T}"}}'),
        True,
    ),
    "unknown-event-type": (
        stream(["tok end"]).replace("event: message_stop", f'event: future_event\ndata: {{"type": "future_event", "note": "key {T} x"}}\n\nevent: message_stop'),
        False,
    ),
    "citations-delta": (stream(["tok end"]).replace("event: content_block_stop", CITATION + "event: content_block_stop"), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_handmade_stream_is_masked_and_parses(proxy, mock, case):
    raw, secret_in_text = CASES[case]
    script = json.dumps({"kind": "garbage", "raw": raw})
    with make_client(proxy) as client:
        r = client.messages.with_raw_response.create(**user_request("hi", stream=True), extra_headers={"x-mock-script": mock_script(script)})
        data = r.http_response.read()
        assert T.encode() not in data, "the secret reached the client"
        events = parse_sse(data)
        assert events[-1][0] == "message_stop", events[-3:]
        if secret_in_text:
            text = sse_text(events)
            assert text.startswith("tok ") and text.endswith(" end") and has_placeholder_for(text, T), text
        # The SDK parses the proxy's output.
        with client.messages.stream(**user_request("hi"), extra_headers={"x-mock-script": mock_script(script)}) as s:
            message = s.get_final_message()
    assert message.stop_reason == "end_turn"
    assert T not in message.model_dump_json()
    if secret_in_text:
        assert has_placeholder_for(message_text(message), T)
    proxy.assert_healthy()
