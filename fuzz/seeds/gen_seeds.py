"""Writes the seed corpora of the fuzz targets (except jwt: gen_jwt_seeds.py) from the shapes
the proxy sees: Messages streams as the API sends them, request bodies as Claude Code and the
SDKs send them, batch results, every coding, and the shipped configs and rule files.

`@@` in a seed is where the targets plant a secret. Run: python3 fuzz/seeds/gen_seeds.py
"""
import base64
import gzip
import json
import pathlib
import shutil
import zlib

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent


def out(target, name, data):
    d = HERE / target
    d.mkdir(exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def ev(name, data):
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def message_start():
    return ev("message_start", {"type": "message_start", "message": {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1}}})


def end():
    return (ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
            "stop_sequence": None}, "usage": {"output_tokens": 9}})
            + ev("message_stop", {"type": "message_stop"}))


def start(i, block):
    return ev("content_block_start", {"type": "content_block_start", "index": i, "content_block": block})


def delta(i, d):
    return ev("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d})


def stop(i):
    return ev("content_block_stop", {"type": "content_block_stop", "index": i})


def text(i, t):
    return delta(i, {"type": "text_delta", "text": t})


streams = {
    "text": message_start() + start(0, {"type": "text", "text": ""}) + text(0, "Hello, ")
    + text(0, "the key is @@ ok") + stop(0) + end(),
    "split": message_start() + start(0, {"type": "text", "text": ""}) + text(0, "token ghp_QENb")
    + ev("ping", {"type": "ping"}) + text(0, "kqiGtLIUjENVR5mBwFuzzPlant0d8RXsh done") + stop(0) + end(),
    "thinking": message_start() + start(0, {"type": "thinking", "thinking": "", "signature": ""})
    + delta(0, {"type": "thinking_delta", "thinking": "let me think @@"})
    + delta(0, {"type": "signature_delta", "signature": "EqQBsig=="}) + stop(0)
    + start(1, {"type": "text", "text": ""}) + text(1, "answer") + stop(1) + end(),
    "tool": message_start() + start(0, {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {}})
    + delta(0, {"type": "input_json_delta", "partial_json": "{\"command\": \"echo "})
    + delta(0, {"type": "input_json_delta", "partial_json": "@@ && ls\"}"}) + stop(0) + end(),
    "error": message_start() + ev("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                     "message": "Overloaded"}}),
    "crlf": (message_start() + start(0, {"type": "text", "text": ""}) + text(0, "a\r\nb @@")
             + stop(0) + end()).replace("\n", "\r\n"),
    "comments": ": keep-alive\n\n" + message_start() + "id: 1\nretry: 10\n" + start(0, {"type": "text", "text": ""})
    + text(0, "x") + stop(0) + end(),
}
for name, body in streams.items():
    out("sse_stream", f"raw-{name}", b"\x00\x03\x07\x40\x01" + body.encode())
for n in range(6):
    out("sse_stream", f"gen-{n}", bytes([1, 2, 9, 200]) + bytes((n * 37 + k * 11) % 256 for k in range(64)))


def frame(headers, payload):
    """One AWS event-stream frame with string headers (Bedrock's framing)."""
    head = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + len(v).to_bytes(2, "big") + v.encode()
                    for k, v in headers)
    total = 12 + len(head) + len(payload) + 4
    prelude = total.to_bytes(4, "big") + len(head).to_bytes(4, "big")
    msg = prelude + zlib.crc32(prelude).to_bytes(4, "big") + head + payload
    return msg + zlib.crc32(msg).to_bytes(4, "big")


for name, body in list(streams.items())[:4]:
    # mode 0: an SSE stream (with `@@`) framed as chunks; mode 4|0 corrupts one frame
    out("event_stream", f"sse-{name}", b"\x00\x03\x07\x40\x01" + body.encode())
    out("event_stream", f"corrupt-{name}", b"\x04\x02\x05\x40" + body.encode())
for n in range(3):
    out("event_stream", f"gen-{n}", bytes([1, 2, 9, 200]) + bytes((n * 41 + k * 13) % 256 for k in range(64)))
chunk = json.dumps({"bytes": base64.b64encode(json.dumps({"type": "ping"}).encode()).decode()})
raw = frame([(":event-type", "chunk"), (":content-type", "application/json"),
             (":message-type", "event")], chunk.encode())
exc = frame([(":exception-type", "throttlingException"), (":message-type", "exception")],
            b'{"message":"slow down"}')
out("event_stream", "raw-frames", b"\x02\x01\x05" + raw * 3 + exc)
out("event_stream", "raw-truncated", b"\x02\x00" + (raw * 2)[:-3])

requests = {
    "simple": {"model": "claude-sonnet-4-5", "max_tokens": 64,
               "messages": [{"role": "user", "content": "my key is @@ please"}]},
    "claude_code": {"model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": True,
                    "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
                    "tools": [{"name": "Bash", "description": "Run a command",
                               "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": "read .env"}]},
                        {"role": "assistant", "content": [
                            {"type": "thinking", "thinking": "I will read it", "signature": "EqQBsig=="},
                            {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "cat .env"}}]},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                                                      "content": "GITHUB_TOKEN=@@\nDEBUG=1\n"}]}],
                    "metadata": {"user_id": "u1"}},
    "document": {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "text/plain",
                                        "data": "aGVsbG8gd29ybGQ="}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "text", "text": "escaped \\u0041 \u00e9 \ud83d\ude00 @@"}]}]},
}
for name, body in requests.items():
    text_ = json.dumps(body, separators=(",", ":"))
    out("json_walk", f"req-{name}", b"\x00" + text_.encode())
    out("json_walk", f"resp-{name}", b"\x03" + text_.encode())
out("json_walk", "escapes", b"\x00" + br'{"a":"\ud83d\ude00\u0067hp_\n\"x\"","b":[1,2.5e3,-0,true,null,{}]}')
out("json_walk", "bom-nan", b"\x03\xef\xbb\xbf" + b'{"a":NaN,"b":-Infinity,"c":"@@"}')

lines = [json.dumps({"custom_id": f"req-{i}", "result": {"type": "succeeded", "message": {
    "id": f"msg_{i}", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": f"answer {i} @@"}], "stop_reason": "end_turn",
    "usage": {"input_tokens": 1, "output_tokens": 1}}}}) for i in range(3)]
out("jsonl", "results", b"\x05\x03\x10\x07\x01\x40" + ("\n".join(lines) + "\n").encode())
out("jsonl", "blank-and-broken", b"\x00" + b'\n{"a":"@@"}\n\n{not json\n{"b":1}')

body = json.dumps(requests["claude_code"]).encode()
codings = ["identity", "gzip", "deflate", "br", "zstd", "x-gzip"]
out("decode_body", "gzip", bytes([1, 0]) + gzip.compress(body))
out("decode_body", "deflate", bytes([2, 0]) + zlib.compress(body))
out("decode_body", "identity", bytes([0, 0]) + body)
out("decode_body", "gzip-bomb", bytes([1, 3, 40, 7, 9]) + gzip.compress(b"\0" * (4 << 20)))
out("decode_body", "gzip-gzip", bytes([0x40 | 1 | (1 << 3), 0]) + gzip.compress(gzip.compress(body)))
out("decode_body", "truncated", bytes([1, 0]) + gzip.compress(body)[:40])
for i, c in enumerate(codings):
    out("decode_body", f"round-{c}", bytes([0x80 | i, 2, 5, 30]) + body[:300])

for toml in list((ROOT / "deploy").glob("*.toml")) + list((ROOT / "deploy" / "examples").glob("*.toml")):
    shutil.copy(toml, HERE / "config_toml" / toml.name) if (HERE / "config_toml").exists() else (
        (HERE / "config_toml").mkdir(), shutil.copy(toml, HERE / "config_toml" / toml.name))
out("config_toml", "planted", '[upstream]\nurl = "https://api.anthropic.com"\napi_key_env = "@@"\n'
    '[server]\nthreads = "@@"\n[masking]\nthinking = "@@"\n')
for rules in sorted((ROOT / "rules").glob("*.toml"))[:6] + [ROOT / "tests/fixtures/engine-rules.toml"]:
    (HERE / "rules_toml").mkdir(exist_ok=True)
    shutil.copy(rules, HERE / "rules_toml" / rules.name)
