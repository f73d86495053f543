"""The response direction of the leak-proof path, end to end through the real `anthropic` SDK:
hand-made upstream replies (the mock's `garbage` kind sends raw bytes, with any label and
headers) that hide a secret where the old path did not look. What the SDK reveals —
`text_stream`, `get_final_message()`, tool-use inputs — and the raw bytes must never hold it."""

from __future__ import annotations

import json

import anthropic
import pytest

from conftest import make_client
from smtest import GITHUB_TOKEN, has_placeholder_for, parse_sse, user_request, mock_script

T = GITHUB_TOKEN
A, B = T[:14], T[14:]
START = {
    "type": "message_start",
    "message": {
        "id": "msg_01leak", "type": "message", "role": "assistant", "model": "claude-opus-4-8",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    },
}


def ev(name: str, obj: dict | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return f"event: {name}\ndata: {data}\n\n"


def start(i, block) -> str:
    return ev("content_block_start", {"type": "content_block_start", "index": i, "content_block": block})


def delta(i, d) -> str:
    return ev("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d})


def text(i, t) -> str:
    return delta(i, {"type": "text_delta", "text": t})


def stop(i) -> str:
    return ev("content_block_stop", {"type": "content_block_stop", "index": i})


def whole(*parts: str, start_event: dict = START) -> str:
    end = ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 5}})
    return ev("message_start", start_event) + "".join(parts) + end + ev("message_stop", {"type": "message_stop"})


TEXT0 = start(0, {"type": "text", "text": ""})

# name -> (raw SSE, whether the SDK must end without an error)
STREAMS = {
    "split-across-text-blocks": (whole(TEXT0, text(0, "key " + A), stop(0), start(1, {"type": "text", "text": ""}), text(1, B + " end"), stop(1)), True),
    "unknown-block-text-deltas": (whole(start(0, {"type": "future_text"}), text(0, "key " + A), text(0, B + " end"), stop(0)), True),
    "unknown-delta-field": (whole(start(0, {"type": "future_block"}), delta(0, {"type": "future_delta", "body": "key " + A}), delta(0, {"type": "future_delta", "body": B + " end"}), stop(0)), True),
    "mcp-tool-input": (whole(
        start(0, {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "deploy", "server_name": "ops", "input": {}}),
        delta(0, {"type": "input_json_delta", "partial_json": '{"token": "' + A}),
        delta(0, {"type": "input_json_delta", "partial_json": B + '"}'}),
        stop(0)), True),
    "tool-start-input-and-name": (whole(start(0, {"type": "tool_use", "id": "toolu_1", "name": "Bash", "note": T, "input": {"command": "echo " + T}}), stop(0)), True),
    "citation-in-start": (whole(start(0, {"type": "text", "text": "", "citations": [{"type": "char_location", "cited_text": "c " + T, "document_index": 0, "document_title": None, "start_char_index": 0, "end_char_index": 1}]}), text(0, "ok"), stop(0)), True),
    "thinking": (whole(start(0, {"type": "thinking", "thinking": "", "signature": ""}), delta(0, {"type": "thinking_delta", "thinking": "k " + A}), delta(0, {"type": "thinking_delta", "thinking": B + " x"}), delta(0, {"type": "signature_delta", "signature": "EqQBsig"}), stop(0)), True),
    "float-index": (whole(TEXT0, ev("content_block_delta", '{"type":"content_block_delta","index":0.0,"delta":{"type":"text_delta","text":"' + T + ' "}}'), stop(0)), False),
    "never-started-index": (whole(TEXT0, text(4, T + " "), stop(0)), False),
    "duplicate-key": (whole(TEXT0, ev("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"' + T + '","text":"hi "}}'), stop(0)), False),
    "id-in-message-start": (whole(TEXT0, text(0, "hi"), stop(0), start_event={**START, "message": {**START["message"], "id": T}}), False),
    "event-name": (whole(TEXT0, text(0, "hi "), ev("x-" + T, {"type": "ping"}), stop(0)), False),
    "signature": (whole(start(0, {"type": "thinking", "thinking": "", "signature": ""}), delta(0, {"type": "thinking_delta", "thinking": "hm"}), delta(0, {"type": "signature_delta", "signature": T}), stop(0)), False),
}


def sdk_read(proxy, script: dict) -> tuple[bytes, str, str, str | None]:
    """Raw bytes, text_stream, the final message as JSON (or ""), the SDK's error (or None)."""
    header = {"x-mock-script": mock_script(script)}
    with make_client(proxy) as client:
        r = client.messages.with_raw_response.create(**user_request("hi", stream=True), extra_headers=header)
        raw = r.http_response.read()
        joined, final, error = "", "", None
        try:
            with client.messages.stream(**user_request("hi"), extra_headers=header) as s:
                for piece in s.text_stream:
                    joined += piece
                final = s.get_final_message().model_dump_json()
        except anthropic.APIError as e:
            error = str(e)
    return raw, joined, final, error


@pytest.mark.parametrize("case", list(STREAMS))
def test_hidden_secrets_never_reach_the_sdk(proxy, mock, case):
    raw, clean_end = STREAMS[case]
    body, joined, final, error = sdk_read(proxy, {"kind": "garbage", "raw": raw})
    assert T.encode() not in body, body
    assert T not in joined and T not in final, (joined, final)
    if len(B) >= 8:
        assert B not in joined and B not in final, (joined, final)
    if clean_end:
        assert error is None, error
        assert parse_sse(body)[-1][0] == "message_stop"
    else:
        assert error is not None, (joined, final)
        assert any(name == "error" for name, _ in parse_sse(body)), body
    proxy.assert_healthy()


SPLIT_STREAM = whole(TEXT0, text(0, "key " + A), text(0, B + " end"), stop(0))


@pytest.mark.parametrize("label", ["text/plain", "application/json", "", "text/event-streamx"])
def test_a_stream_under_another_label_is_still_scanned_as_sse(proxy, mock, label):
    body, joined, final, error = sdk_read(proxy, {"kind": "garbage", "raw": SPLIT_STREAM, "content_type": label})
    assert T.encode() not in body and A.encode() + B.encode() not in body
    assert T not in joined and T not in final, (joined, final)
    assert error is None, error
    assert has_placeholder_for(joined, T), joined


@pytest.mark.parametrize("prefix", ["", "\ufeff"])
@pytest.mark.parametrize("label", ["text/plain", "application/json"])
def test_json_under_any_label_is_walked_as_json(proxy, mock, label, prefix):
    escaped = "".join("\\u%04x" % ord(c) for c in T)
    message = ('{"id":"msg_1","type":"message","role":"assistant","model":"claude-opus-4-8",'
               '"content":[{"type":"text","text":"key ' + escaped + ' end"}],'
               '"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}')
    script = json.dumps({"kind": "garbage", "raw": prefix + message, "content_type": label})
    with make_client(proxy) as client:
        r = client.messages.with_raw_response.create(**user_request("hi"), extra_headers={"x-mock-script": mock_script(script)})
        data = r.http_response.read()
    decoded = json.loads(data.decode("utf-8-sig"))
    assert T not in json.dumps(decoded), decoded
    assert has_placeholder_for(decoded["content"][0]["text"], T), decoded


def test_an_upgrade_answer_is_refused(proxy, mock):
    script = json.dumps({"kind": "garbage", "raw": "data: " + T + "\n\n", "status": 101, "headers": [["upgrade", "websocket"]]})
    with make_client(proxy) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.create(**user_request("hi"), extra_headers={"x-mock-script": mock_script(script)})
    assert caught.value.status_code == 502
    assert T not in str(caught.value.body)


def test_a_secret_in_a_response_header_is_refused(proxy, mock):
    script = json.dumps({"kind": "garbage", "raw": SPLIT_STREAM, "headers": [["x-debug", "token=" + T]]})
    with make_client(proxy) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.create(**user_request("hi", stream=True), extra_headers={"x-mock-script": mock_script(script)})
    assert caught.value.status_code == 502
    assert T not in str(caught.value.body) and T not in str(caught.value.response.headers)


def test_the_request_id_header_is_the_proxys_own(proxy, mock):
    """The proxy writes its id after scanning the upstream's headers: an upstream header of that
    name is dropped, never forwarded in its place or beside it."""
    script = json.dumps({"kind": "garbage", "raw": SPLIT_STREAM, "headers": [["x-streammask-request-id", "upstream-" + T]]})
    with make_client(proxy) as client:
        with client.messages.with_streaming_response.create(**user_request("hi", stream=True), extra_headers={"x-mock-script": mock_script(script)}) as r:
            body = b"".join(r.http_response.iter_bytes())
            ids = r.http_response.headers.get_list("x-streammask-request-id")
    assert len(ids) == 1 and ids[0].startswith("smreq_"), ids
    assert T.encode() not in body


# --- random streams through the real SDK ------------------------------------------------------

def _random_stream(rng) -> tuple[str, list[str]]:
    """A random Messages stream: text, thinking, unknown and tool-like blocks, extra fields, a
    token planted in one of them and split across deltas (and, for text, across adjacent text
    blocks). Returns the raw SSE and the pieces of the planted token."""
    token = "ghp_" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") for _ in range(36))
    cut = sorted(rng.sample(range(1, len(token)), rng.randint(1, 4)))
    pieces = [token[a:b] for a, b in zip([0] + cut, cut + [len(token)])]
    parts, index = [], 0
    planted = rng.choice(["text-split-blocks", "text", "thinking", "future", "tool", "mcp"])
    for kind in rng.sample(["text", "thinking", "future", "tool"], rng.randint(1, 4)) + [planted]:
        extra = {"x_extra": rng.choice(["", "note", 7])} if rng.random() < 0.3 else {}
        carry = kind == planted
        lead = rng.choice(["key ", "token=", "(", "\n", "TOKEN_"]) if carry else ""
        if kind in ("text", "text-split-blocks"):
            chunks = [lead + pieces[0], *pieces[1:], rng.choice([" end", ".", ""])] if carry else ["hello ", "world"]
            if kind == "text-split-blocks" and len(chunks) > 2:
                # Each piece in its own text block: the SDK's text_stream joins them.
                for chunk in chunks:
                    parts += [start(index, {"type": "text", "text": "", **extra}), text(index, chunk), stop(index)]
                    index += 1
                continue
            parts.append(start(index, {"type": "text", "text": "", **extra}))
            parts += [text(index, c) for c in chunks if c]
        elif kind == "thinking":
            chunks = [lead + pieces[0], *pieces[1:]] if carry else ["let me ", "think"]
            parts.append(start(index, {"type": "thinking", "thinking": "", "signature": ""}))
            parts += [delta(index, {"type": "thinking_delta", "thinking": c}) for c in chunks]
            parts.append(delta(index, {"type": "signature_delta", "signature": "EqQBc2ln"}))
        elif kind == "future":
            chunks = [lead + pieces[0], *pieces[1:]] if carry else ["a ", "b"]
            parts.append(start(index, {"type": "future_block", **extra}))
            parts += [delta(index, {"type": "future_delta", "body": c}) for c in chunks]
        else:
            block = {"type": "mcp_tool_use", "server_name": "ops"} if kind == "mcp" else {"type": "tool_use"}
            payload = json.dumps({"command": "echo " + lead + token if carry else "ls -la"})
            cuts = sorted(rng.sample(range(1, len(payload)), 3))
            parts.append(start(index, {**block, "id": f"toolu_{index}", "name": "Bash", "input": {}}))
            parts += [delta(index, {"type": "input_json_delta", "partial_json": payload[a:b]})
                      for a, b in zip([0] + cuts, cuts + [len(payload)])]
        parts.append(stop(index))
        index += 1
    # A head emitted before a block boundary may show up to N-1 body characters (N = 20 for
    # GitHub tokens: with 11+ of its 30 random characters missing, more than 2^64 candidates
    # remain); no run of N body characters may ever be revealed.
    body = token[4:]
    return whole(*parts), [token] + [body[i : i + 20] for i in range(len(body) - 19)]


@pytest.mark.parametrize("seed", range(24))
def test_random_streams_reveal_no_secret_to_the_sdk(proxy, mock, seed):
    import random

    rng = random.Random(seed)
    raw, secrets = _random_stream(rng)
    max_write = rng.choice([1, 3, 17, 4096])
    body, joined, final, error = sdk_read(
        proxy, {"kind": "garbage", "raw": raw, "split_writes": True, "max_write": max_write}
    )
    assert error is None, error
    for secret in secrets:
        assert secret.encode() not in body, (seed, secret)
        assert secret not in joined and secret not in final, (seed, joined, final)
