"""Hostile upstreams: one stream fed without end must not grow the proxy. The proxy's resident
memory is sampled while a 192 MiB streamed answer passes through it; the growth must stay under
the caps that apply (12 KiB of held text, a 1 MiB SSE event) plus slack for the allocator, far
below what buffering the stream would cost. Nothing of the stream may be lost on the way."""

from __future__ import annotations

import json
import threading
import time

import httpx

from smtest import API_KEY, MODEL

MIB = 1 << 20
UNIT = "the quick brown fox jumps over the lazy dog; "
STREAM_BYTES = 192 * MIB
# Held text (12 KiB) and one SSE event (1 MiB) are the caps a text stream meets; the rest is
# room for the allocator's arenas and per-connection buffers. Buffering the stream would cost
# several times STREAM_BYTES.
SLACK = 48 * MIB


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def stream_text(proxy, mock, repeat: int) -> tuple[int, bool]:
    """Stream `UNIT * repeat` through the proxy; the text length the client read, and whether
    the stream ended with `message_stop`."""
    mock.script({"kind": "text", "text": UNIT, "repeat": repeat, "max_delta": 16384})
    body = {"model": MODEL, "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "go on"}]}
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    text_len, stopped, pending = 0, False, b""
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw(1 << 16):
            pending += chunk
            *events, pending = pending.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if not line.startswith(b"data: "):
                        continue
                    data = json.loads(line[6:])
                    if data["type"] == "content_block_delta":
                        text_len += len(data["delta"]["text"].encode())
                    elif data["type"] == "message_stop":
                        stopped = True
    return text_len, stopped


def test_one_stream_fed_without_end_keeps_the_proxy_within_its_caps(proxy, mock):
    pid = proxy.proc.pid
    # Warm the allocator with a stream of the same shape first.
    assert stream_text(proxy, mock, (4 * MIB) // len(UNIT))[1]
    baseline = rss_bytes(pid)
    peak = baseline
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    repeat = STREAM_BYTES // len(UNIT)
    try:
        text_len, stopped = stream_text(proxy, mock, repeat)
    finally:
        done.set()
        sampler.join()
    assert stopped, "the stream did not end with message_stop"
    assert text_len == repeat * len(UNIT), "text was lost or added on the way"
    growth = peak - baseline
    print(f"proxy RSS {baseline / MIB:.1f} MiB before, peak {peak / MIB:.1f} MiB during a "
          f"{STREAM_BYTES // MIB} MiB stream (growth {growth / MIB:.1f} MiB)")
    assert growth < SLACK, f"the proxy grew by {growth / MIB:.1f} MiB for one {STREAM_BYTES // MIB} MiB stream"
    proxy.assert_healthy()
