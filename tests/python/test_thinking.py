"""Thinking text end to end, through the real `anthropic` SDK: the client only ever sees it
masked, the proxy keeps the original (encrypted, by signature) and puts it back when the signed
block returns in a later turn — so the upstream gets back exactly what it produced and its
signature verifies. A thinking block the proxy never produced (an unknown signature), or one
whose text is not what the client was shown, goes upstream masked."""

from __future__ import annotations

import json
import secrets

import pytest

from conftest import make_client
from smtest import (
    GITHUB_TOKEN,
    GITHUB_TOKEN_2,
    MODEL,
    has_placeholder_for,
    plant,
    user_request,
)

T = GITHUB_TOKEN
# Quotes, a newline, a backslash and non-ASCII text: the original must come back byte for byte.
ORIGINAL = f'The deploy key is {T} — "do not print it"\nnext: check C:\\deploy\\env'
MASK_CONFIG = "[masking]\nthinking = \"mask\"\n"


def thinking_script(**extra) -> dict:
    return {"kind": "thinking_text", "thinking": ORIGINAL, "text": "Done.", **extra}


def turn_one(proxy, mock, stream: bool):
    """Turn 1: the upstream answers with a thinking block holding a secret; returns the SDK's
    final message (what the client keeps) and its JSON."""
    mock.script(thinking_script())
    with make_client(proxy) as client:
        if stream:
            with client.messages.stream(**user_request("deploy it")) as s:
                for _ in s:
                    pass
                message = s.get_final_message()
        else:
            message = client.messages.create(**user_request("deploy it"))
    dumped = message.model_dump_json()
    assert T not in dumped, dumped
    thinking = [b for b in message.content if b.type == "thinking"]
    assert len(thinking) == 1, dumped
    assert has_placeholder_for(thinking[0].thinking, T), thinking[0].thinking
    assert thinking[0].signature, dumped
    return message, thinking[0]


def send_back(proxy, mock, assistant_content: list[dict], stream: bool) -> dict:
    """Turn 2 (as Claude Code sends it): the whole conversation with the assistant's blocks as
    the client kept them; returns the request body the upstream received."""
    mock.script({"kind": "text", "text": "ok"})
    messages = [
        {"role": "user", "content": "deploy it"},
        {"role": "assistant", "content": assistant_content},
        {"role": "user", "content": "go on"},
    ]
    with make_client(proxy) as client:
        if stream:
            with client.messages.stream(model=MODEL, max_tokens=1024, messages=messages) as s:
                s.get_final_message()
        else:
            client.messages.create(model=MODEL, max_tokens=1024, messages=messages)
    received = mock.messages()
    assert received, "the upstream got no request"
    return json.loads(received[-1]["body"])


def blocks(message) -> list[dict]:
    return [b.model_dump(exclude_none=True) for b in message.content]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "json"])
def test_masked_thinking_returns_upstream_as_its_original(proxy, mock, stream):
    message, block = turn_one(proxy, mock, stream)
    body = send_back(proxy, mock, blocks(message), stream)
    sent = body["messages"][1]["content"][0]
    assert sent["type"] == "thinking"
    assert sent["thinking"] == ORIGINAL, "the upstream must get back its own text, byte for byte"
    assert sent["signature"] == block.signature
    # The rest of the conversation is untouched (the text block the client saw).
    assert body["messages"][1]["content"][1] == {"type": "text", "text": "Done."}
    proxy.assert_healthy()


def test_a_turn_returned_twice_is_restored_both_times(proxy, mock):
    message, _ = turn_one(proxy, mock, stream=True)
    for _ in range(2):
        body = send_back(proxy, mock, blocks(message), stream=False)
        assert body["messages"][1]["content"][0]["thinking"] == ORIGINAL


def test_unknown_signature_with_a_secret_goes_upstream_masked(proxy, mock):
    plant(GITHUB_TOKEN_2)
    signature = "Eq" + secrets.token_urlsafe(48)
    thinking = f"I could use {GITHUB_TOKEN_2} here"
    body = send_back(
        proxy,
        mock,
        [
            {"type": "thinking", "thinking": thinking, "signature": signature},
            {"type": "text", "text": "Done."},
        ],
        stream=False,
    )
    sent = body["messages"][1]["content"][0]
    assert GITHUB_TOKEN_2 not in json.dumps(body)
    assert has_placeholder_for(sent["thinking"], GITHUB_TOKEN_2), sent
    assert sent["signature"] == signature, "the signature is forwarded as sent"


def test_a_known_signature_with_other_text_stays_masked(proxy, mock):
    message, block = turn_one(proxy, mock, stream=True)
    # The client sends the raw secret back under the signature (or edits the text): that is
    # not what it was shown, so nothing is restored and the secret is masked.
    raw = [{"type": "thinking", "thinking": ORIGINAL, "signature": block.signature}]
    body = send_back(proxy, mock, raw, stream=False)
    sent = body["messages"][1]["content"][0]
    assert T not in json.dumps(body)
    assert has_placeholder_for(sent["thinking"], T)
    edited = [{"type": "thinking", "thinking": block.thinking + " edited", "signature": block.signature}]
    body = send_back(proxy, mock, edited, stream=False)
    assert body["messages"][1]["content"][0]["thinking"] == block.thinking + " edited"


def test_thinking_mask_mode_keeps_nothing(proxy_factory, mock):
    masking = proxy_factory(config=MASK_CONFIG, name="thinking-mask")
    message, block = turn_one(masking, mock, stream=True)
    body = send_back(masking, mock, blocks(message), stream=False)
    sent = body["messages"][1]["content"][0]
    assert sent["thinking"] == block.thinking, "masked text goes upstream as the client kept it"
    assert T not in json.dumps(body)
    masking.assert_healthy()


def test_report_mode_is_refused_at_start_up(session_dir):
    import subprocess

    from smtest import PROXY_BIN

    cfg = session_dir / "thinking-report.toml"
    cfg.write_text("[masking]\nthinking = \"report\"\n")
    done = subprocess.run(
        [str(PROXY_BIN), "config", "check", str(cfg)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "masking.thinking" in out and '"restore"' in out and '"mask"' in out, out


def test_proxy_logs_hold_no_thinking_secret(proxy):
    text = proxy.log_text()
    assert T not in text and GITHUB_TOKEN_2 not in text
