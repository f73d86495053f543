#!/usr/bin/env python3
"""Scale test of streammask (issue 17): N concurrent paced SSE streams (default 10,000) through
one proxy instance, held open together. Reports errors, the proxy's RSS per open stream, its CPU,
whether it kept the pace, and the latency it adds to each SSE event while all streams are open.

Everything runs on loopback and stops by itself (`--streams 10000 --hold-secs 30`: 1-2 minutes;
`--smoke`: 200 streams, well under a minute):

  streammask-mock  --no-record --no-split-writes --threads 1 (`--mock-threads`), port U
  streammask run   RUST_LOG=warn (`--rust-log`), config in a temp dir: server.threads 2 (`--proxy-threads`),
                   upstream http://127.0.0.1:U, every other key the embedded default.
                   `--proxy pingora` runs streammask-bench-pingora instead (plain Pingora, nothing
                   inspected): what Pingora itself costs per stream
  this script      asyncio over raw non-blocking sockets, one event loop, stdlib only

Streams. Every stream is a `POST /v1/messages` with `"stream": true` and an `x-mock-script` header
{"kind":"text","text":T,"max_delta":1,"delay_ms":I,"split_writes":false}: the mock sends one event,
then pauses I ms (`--interval-ms`, default 100), for every event, each event in its own write. With
max_delta 1 every character of T is its own text_delta, so upstream event k (k >= 3, after
message_start, ping and content_block_start) carries character k-3 of T: the event <-> text mapping
is exact on both sides of the proxy, and "characters delivered" counts upstream events. T is plain
words (no secrets); its length is chosen per stream so that every stream ends at the same planned
time: the streams are opened in batches (`--batch` per `--batch-interval`, 500 per 0.5 s by
default) and then all are open together for `--hold-secs` (default 30). The client's source
addresses are spread over 127.0.0.1 .. 127.0.0.K (`--sources`, bound before connect with
IP_BIND_ADDRESS_NO_PORT, so each address has the whole ephemeral port range to each destination).
Requests carry `Connection: close`, so the end of a response is the end of its connection. A
stream is ok when it got 200, a complete chunked body, SSE ending in message_stop with no error
event, and text equal to T. A stream still open at the deadline (planned end + the largest of 30 s,
half of ramp + hold, 10 intervals) is closed and counted as an error ("not finished at the
deadline"): the machine did not keep the pace. Whether the proxy or the mock fell behind shows in
the events/s delivered per proxied stream against the direct streams (the mock's own pace).

HTTP/2 downstream (`--downstream h2c`). The proxied streams that are not probes share HTTP/2
connections over cleartext (the proxy's `[server] h2c = true`), `--h2-streams` per connection
(default 100, the proxy's SETTINGS_MAX_CONCURRENT_STREAMS), as a load balancer or an HTTP/2
client would send them; each connection carries streams of one batch. The client speaks just
enough HTTP/2 for that (stdlib: HPACK literals out, the response status from its first header
byte, receive windows at 2^31-1, SETTINGS and PING acknowledged, RST_STREAM and GOAWAY as stream
errors), and a stream is ok on the same terms as over HTTP/1.1, END_STREAM standing for the last
chunk. Probes and direct streams stay on HTTP/1.1 sockets, so the latency method is unchanged.
The proxy then needs one descriptor per stream (upstream) plus one per connection: 10,000
streams fit under a hard limit of 20,000, which HTTP/1.1 downstream (two per stream) does not.

Memory and CPU. The proxy's VmRSS (/proc/PID/status) is read after warm-up (one direct and two
proxied short streams, then 1 s of quiet): the baseline. It is sampled every 0.25 s with the
proxy's and the mock's CPU time; the peak is the highest sample inside the all-open window (from
the last stream's first byte to the first stream's end). RSS growth per stream = (peak - baseline)
/ proxied streams open at that sample. CPU: utime+stime from /proc/PID/stat, over the run and
inside the window (as cores busy) and per upstream event. Throughput: upstream events delivered to
the clients per second inside the window, proxied streams against direct ones (the mock's pace).

Added latency per SSE event (the method). The mock cannot put its send time in an event, and a
timestamping relay in front of it would have to move every one of the ~100,000 events per second
itself. Instead the kernel timestamps both ends:

  * upstream send time: a packet socket (AF_PACKET on lo, needs CAP_NET_RAW) with a classic BPF
    filter that passes, of the packets the mock sends, only those whose payload is a text_delta
    carrying a TAB ('"\\t"' at the event's fixed offset), plus the requests going to the mock (to
    learn which upstream connection serves which probe stream: the request body carries the probe
    id, which the proxy forwards unchanged). The timestamp is that of the outgoing copy, taken
    when the mock writes the event.
  * client receive time: SO_TIMESTAMPNS on every client socket, the kernel's timestamp of the
    received segment, so the client's own scheduling lag does not count.

`--probes` of the proxied streams (default N/20, at most 500, spread evenly over the ramp) use TABs
instead of spaces between words; the others use spaces, so the filter sees only probe events.
streammask holds back a trailing word until whitespace arrives (its masking design), so only an
event ending in whitespace can be forwarded at once: the measured events are the TAB events. For
TAB number n of a probe stream, latency = (client receive time of the event carrying that TAB's
offset) - (time the mock wrote TAB event n). `--direct` streams (default 50) with the same probe
script go straight to the mock and are measured the same way; they calibrate the method (kernel to
kernel on loopback with no proxy: ~10-20 µs). Added latency = proxied minus direct, p50 minus p50
and p99 minus p99 (as in bench_proxy.py part 1). Only events the mock wrote inside the all-open
window count (the whole run is printed too). A TAB the mock wrote but the client had not received
when its stream was closed at the deadline is counted at (close time - send time), a lower bound:
the percentiles are then marked ">=". A probe whose captured TAB count disagrees with what it
received is left out ("capture mismatch"). If one recv returned two events (client > 1 interval
behind), both get the later timestamp: an overestimate.

Limits. The proxy needs two descriptors per stream (downstream and upstream socket; one with
`--downstream h2c`) plus ~30; the
script raises RLIMIT_NOFILE to the hard limit for itself and its children and refuses to start
(exit 3, naming the largest N that fits) when the hard limit is too low, unless `--force` (the run
then shows how the proxy fails when it runs out). The client spreads over several source
addresses, but the proxy -> mock leg is always 127.0.0.1 -> 127.0.0.1:U: one instance can hold at
most ~28,000 upstream connections with the default ip_local_port_range.

Exit status: 0 when the targets were met (no errors; RSS growth <= 32 KiB per stream, not judged
with --smoke, whose 200 streams are too few), 1 when the run completed and a target was missed,
2 on a harness failure, 3 when something required is missing (a binary, descriptors), 124 on the
overall time limit, 143 on SIGTERM. Linux only (x86_64/aarch64: SO_TIMESTAMPNS = 35). Python 3.11
standard library; helpers from bench_proxy.py (same directory).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import ctypes
import errno
import gc
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_proxy import (  # noqa: E402  (helpers of the end-to-end benchmark)
    DEFAULT_BIN_DIR,
    NO_PROXY_OPENER,
    PLACEHOLDER_KEY,
    PROCS,
    event_cost_between,
    event_cost_snapshot,
    fmt_le,
    free_port,
    git_rev,
    loadavg,
    machine_info,
    pct,
    proc_cpu_seconds,
    stop_all,
    text_ranges,
    words_text,
)

SO_TIMESTAMPNS = 35            # SO_TIMESTAMPNS_OLD on x86_64 and aarch64; cmsg: struct timespec
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_STATISTICS = 6
ETH_P_ALL = 0x0003
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
RSS_TARGET_KIB = 32
EVENTS_BEFORE_TEXT = 3         # message_start, ping, content_block_start
EVENTS_AFTER_TEXT = 3          # content_block_stop, message_delta, message_stop
PROBE_RE = re.compile(rb"sbprobe-(\d{6})")
MARK = b'"\\t"'                # a TAB text delta as it is written in the event's JSON
TIMEOUT_KIND = "not finished at the deadline"

# ---------------------------------------------------------------------------------------------
# processes: bench_proxy.py's list and stop_all; children get a raised descriptor limit


def _child_setup(nofile: int):
    def setup():
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
        # Children die with this script even if it is killed hard (PR_SET_PDEATHSIG = 1). SIGKILL,
        # not bench_proxy's SIGTERM: on SIGTERM Pingora drains its connections for minutes.
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except OSError:
            pass
    return setup


def spawn(cmd, *, nofile, env=None, stdout=None, stderr=None) -> subprocess.Popen:
    p = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                         preexec_fn=_child_setup(nofile))
    PROCS.append(p)
    return p


class Abort(Exception):
    def __init__(self, msg: str, code: int = 2):
        super().__init__(msg)
        self.code = code


def wait_ready(url_or_port, proc: subprocess.Popen, what: str, timeout: float):
    """Until GET url answers 200 (str) or the TCP port accepts (int)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Abort(f"{what} exited with status {proc.returncode} during start-up")
        try:
            if isinstance(url_or_port, int):
                socket.create_connection(("127.0.0.1", url_or_port), timeout=0.5).close()
                return
            with NO_PROXY_OPENER.open(url_or_port, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise Abort(f"{what} was not ready ({url_or_port}) within {timeout:.0f}s")


def proc_status(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM) in KiB; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


# ---------------------------------------------------------------------------------------------
# the packet capture (upstream send times of the probes' TAB events)


def _bpf(prog):
    """Assemble [(code, jt, jf, k) | 'label'] (jt/jf: 0 or a label) into struct sock_filter[]."""
    labels, pc = {}, 0
    for ins in prog:
        if isinstance(ins, str):
            labels[ins] = pc
        else:
            pc += 1
    out, pc = [], 0
    for ins in prog:
        if isinstance(ins, str):
            continue
        code, jt, jf, k = ins
        jt = labels[jt] - pc - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - pc - 1 if isinstance(jf, str) else jf
        out.append(struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF))
        pc += 1
    return b"".join(out), pc


class Capture:
    """AF_PACKET socket on lo: the TAB events the mock writes, and the requests sent to the mock."""

    def __init__(self, mock_port: int, mark_offset: int):
        LD_W_ABS, LD_H_ABS, LD_B_ABS = 0x20, 0x28, 0x30
        LD_W_IND, LD_H_IND, LD_B_IND = 0x40, 0x48, 0x50
        LDX_MSH, JEQ, JGT, RET = 0xB1, 0x15, 0x25, 0x06
        AND_K, RSH_K, ADD_X, SUB_X, TAX = 0x54, 0x74, 0x0C, 0x1C, 0x07
        pkttype = -0x1000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE
        mark = struct.unpack("!I", MARK)[0]
        hdr_len = [(LD_B_IND, 0, 0, 26), (AND_K, 0, 0, 0xF0), (RSH_K, 0, 0, 2), (ADD_X, 0, 0, 0),
                   (TAX, 0, 0, 0)]  # X = IP header + TCP header length
        prog = [
            (LD_W_ABS, 0, 0, pkttype), (JEQ, 0, "rej", 4),   # the outgoing copy (send time)
            (LD_H_ABS, 0, 0, 12), (JEQ, 0, "rej", 0x0800),   # IPv4
            (LD_B_ABS, 0, 0, 23), (JEQ, 0, "rej", 6),        # TCP
            (LDX_MSH, 0, 0, 14),                              # X = IP header length
            (LD_H_IND, 0, 0, 14), (JEQ, "src", 0, mock_port),
            (LD_H_IND, 0, 0, 16), (JEQ, 0, "rej", mock_port),
            *hdr_len, (LD_H_ABS, 0, 0, 16), (SUB_X, 0, 0, 0), (JGT, "acc", "rej", 0),  # request data
            "src", *hdr_len, (LD_W_IND, 0, 0, 14 + mark_offset), (JEQ, "acc", "rej", mark),
            "acc", (RET, 0, 0, 0xFFFF),
            "rej", (RET, 0, 0, 0),
        ]
        code, n = _bpf(prog)
        self._buf = ctypes.create_string_buffer(code)  # must outlive the socket
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                             struct.pack("HL", n, ctypes.addressof(self._buf)))
        self.sock.bind(("lo", 0))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        self.drain(lambda *_: None)  # packets queued before the filter was attached
        self.mock_port = mock_port
        self.conn_probe: dict[bytes, int | None] = {}  # (client ip, port) of a mock connection -> probe
        self.taps: dict[int, list[int]] = {}           # probe id -> send times (ns, CLOCK_REALTIME)
        self.packets = 0

    def drain(self, handle=None):
        handle = handle or self.handle
        while True:
            try:
                pkt, anc, _, _ = self.sock.recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError):
                return
            handle(pkt, ts_of(anc))

    def handle(self, pkt: bytes, t: int):
        self.packets += 1
        tcp = 14 + (pkt[14] & 0x0F) * 4
        dport = struct.unpack_from("!H", pkt, tcp + 2)[0]
        payload = pkt[tcp + (pkt[tcp + 12] >> 4) * 4:]
        if dport == self.mock_port:  # (part of) a request to the mock: which probe, if any
            key = pkt[26:30] + pkt[tcp:tcp + 2]  # source address and port
            m = PROBE_RE.search(payload)
            if m:
                self.conn_probe[key] = int(m.group(1))
            elif payload[:5] in (b"POST ", b"GET /"):
                self.conn_probe[key] = None
        else:
            probe = self.conn_probe.get(pkt[30:34] + pkt[tcp + 2:tcp + 4])  # destination
            if probe is not None:
                self.taps.setdefault(probe, []).append(t)

    def stats(self):
        try:
            packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            return {"kernel_packets": packets, "kernel_drops": drops}
        except OSError:
            return {}


def ts_of(anc) -> int:
    for _, typ, data in anc:
        if typ == SO_TIMESTAMPNS and len(data) >= 16:
            sec, ns = struct.unpack_from("qq", data)
            return sec * 1_000_000_000 + ns
    return time.time_ns()


# ---------------------------------------------------------------------------------------------
# streams


class Stream:
    __slots__ = ("idx", "path", "probe", "text", "req", "src", "sock", "pieces", "t_req", "t_end",
                 "error", "ok", "rng", "t_first", "t_last", "chars", "win_chars", "h2_status", "h2_ended")

    def __init__(self, idx, path, probe, text, req, src):
        self.idx, self.path, self.probe, self.text, self.req, self.src = idx, path, probe, text, req, src
        self.sock = None
        self.pieces: list[tuple[int, bytes]] = []  # (kernel receive time ns, bytes)
        self.t_req = self.t_end = self.t_first = self.t_last = None
        self.error = None
        self.ok = False
        self.rng = None  # client text ranges [(start, end, t_ns, text)], kept for probes
        self.chars = 0   # text characters (= upstream text events) received
        self.win_chars = 0  # of which inside the all-open window
        # A stream carried by an h2c connection (--downstream h2c): its pieces are its DATA frames'
        # payloads, its status is read from its HEADERS frame, its end is END_STREAM.
        self.h2_status = None
        self.h2_ended = False

    @property
    def h2(self) -> bool:
        return isinstance(self.req, H2Request)

    def started_200(self) -> bool:
        return self.h2_status == 200 if self.h2 else self.pieces[0][1][9:12] == b"200"

    def body_complete(self) -> bool:
        return self.h2_ended if self.h2 else self.pieces[-1][1].endswith(b"0\r\n\r\n")


def request_parts(text: str, interval_ms: int, tag: str) -> tuple[list[tuple[str, str]], str]:
    script = json.dumps({"kind": "text", "text": text, "max_delta": 1, "delay_ms": interval_ms,
                         "split_writes": False}, separators=(",", ":"))
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": True,
                       "messages": [{"role": "user", "content": f"bench_streams {tag}"}]},
                      separators=(",", ":"))
    return [("content-type", "application/json"), ("anthropic-version", "2023-06-01"),
            ("x-mock-script", script), ("content-length", str(len(body)))], body


def make_request(port: int, text: str, interval_ms: int, tag: str) -> bytes:
    headers, body = request_parts(text, interval_ms, tag)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}Connection: close\r\n"
            f"\r\n{body}").encode()


# ---- HTTP/2 over cleartext (RFC 9113), just what a client of one SSE response per stream needs.
# Requests are encoded as HPACK literals without indexing or Huffman coding (RFC 7541 6.2.2), which
# every decoder accepts. Of a response header block only the status is read: an h2 server
# encodes `:status: 200` first, as static table entry 8 (one byte, 0x88); the other indexed
# statuses are entries 9-14; anything else is reported as "not 200". The client announces a
# receive window of 2^31-1 for the connection and every stream, and widens the connection's again
# after every 2^30 bytes.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_DATA, H2_HEADERS, H2_RST_STREAM, H2_SETTINGS, H2_PING, H2_GOAWAY, H2_WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
H2_END_STREAM, H2_ACK, H2_PADDED, H2_PRIORITY = 0x1, 0x1, 0x8, 0x20
H2_MAX_WINDOW = 2 ** 31 - 1
H2_STATIC_STATUS = {0x88: 200, 0x89: 204, 0x8A: 206, 0x8B: 304, 0x8C: 400, 0x8D: 404, 0x8E: 500}


def h2_frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


def hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out, value = bytearray((limit,)), value - limit
    while value >= 128:
        out.append(value & 127 | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


class H2Request:
    """The HEADERS and DATA frames of one stream's request, built once its stream id is known."""
    __slots__ = ("frames",)

    def __init__(self, sid: int, port: int, text: str, interval_ms: int, tag: str):
        headers, body = request_parts(text, interval_ms, tag)
        block = b"".join(hpack_literal(k, v) for k, v in [
            (":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
            (":path", "/v1/messages")] + headers)
        self.frames = (h2_frame(H2_HEADERS, 0x4, sid, block) +  # END_HEADERS
                       h2_frame(H2_DATA, H2_END_STREAM, sid, body.encode()))


class H2Conn:
    """One h2c connection carrying `--h2-streams` proxied streams (ids 1, 3, 5, ...)."""

    def __init__(self, streams: dict[int, Stream], src: str):
        self.streams = streams  # stream id -> Stream, until the stream ends
        self.src = src
        self.sock = None
        self.buf = bytearray()
        self.unacknowledged = 0  # DATA bytes received since the connection's window was last widened


def stream_text(chars: int, probe: bool) -> str:
    t = words_text(chars + 16)[:chars]
    return t.replace(" ", "\t") if probe else t


def error_kind(err: BaseException) -> str:
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return "connect timeout"
    if isinstance(err, OSError) and err.errno:
        return f"{type(err).__name__} {errno.errorcode.get(err.errno, err.errno)}"
    return type(err).__name__


class Client:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.open = {"proxy": 0, "direct": 0}  # connected and not finished
        self.connecting = 0
        self.pending = 0                        # started and not finished
        self.done = asyncio.Event()
        self.h2_conns: list[H2Conn] = []

    async def connect(self, s: socket.socket, src: str, addr, connect_timeout: float):
        """Connects `s` from `src` (the port chosen at connect), non-blocking, with the kernel's
        receive timestamps on."""
        s.setblocking(False)
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((src, 0))
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await asyncio.wait_for(self.loop.sock_connect(s, addr), connect_timeout)

    @staticmethod
    def receive(sock: socket.socket, size: int):
        """One read: (bytes, kernel receive time); None if nothing was ready; b"" at the end."""
        try:
            data, anc, _, _ = sock.recvmsg(size, 64)
        except (BlockingIOError, InterruptedError):
            return None
        return data, (ts_of(anc) if data else 0)

    async def start(self, st: Stream, addr, connect_timeout: float):
        self.pending += 1
        self.done.clear()
        self.connecting += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            await self.connect(s, st.src, addr, connect_timeout)
            st.t_req = time.time_ns()
            n = s.send(st.req)
            if n != len(st.req):
                raise OSError(f"short send {n} of {len(st.req)}")
        except (OSError, asyncio.TimeoutError) as e:
            s.close()
            self.connecting -= 1
            st.error = error_kind(e)
            st.t_end = time.time_ns()
            self._finished()
            return
        self.connecting -= 1
        self.open[st.path] += 1
        st.sock = s
        self.loop.add_reader(s.fileno(), self.on_read, st)

    def on_read(self, st: Stream):
        try:
            got = self.receive(st.sock, 65536)
        except OSError as e:
            self.finish(st, error_kind(e))
            return
        if got is None:
            return
        if not got[0]:
            self.finish(st, None)
            return
        st.pieces.append((got[1], got[0]))

    def finish(self, st: Stream, error):
        self.loop.remove_reader(st.sock.fileno())
        st.sock.close()
        st.sock = None
        st.t_end = time.time_ns()
        st.error = error
        self.open[st.path] -= 1
        self._finished()

    def _finished(self):
        self.pending -= 1
        if self.pending == 0:
            self.done.set()

    def abort_all(self, streams):
        for conn in self.h2_conns:
            if conn.sock is not None:
                self.finish_h2(conn, TIMEOUT_KIND)
        for st in streams:
            if st.sock is not None:
                self.finish(st, TIMEOUT_KIND)

    async def start_h2(self, conn: H2Conn, addr, connect_timeout: float):
        n = len(conn.streams)
        self.pending += n
        self.done.clear()
        self.connecting += n
        self.h2_conns.append(conn)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            await self.connect(s, conn.src, addr, connect_timeout)
            t = time.time_ns()
            settings = (2).to_bytes(2, "big") + (0).to_bytes(4, "big") + \
                (4).to_bytes(2, "big") + H2_MAX_WINDOW.to_bytes(4, "big")  # no push; widest window
            out = [H2_PREFACE, h2_frame(H2_SETTINGS, 0, 0, settings),
                   h2_frame(H2_WINDOW_UPDATE, 0, 0, (H2_MAX_WINDOW - 65535).to_bytes(4, "big"))]
            for st in conn.streams.values():
                st.t_req = t
                out.append(st.req.frames)
            await asyncio.wait_for(self.loop.sock_sendall(s, b"".join(out)), connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            s.close()
            self.connecting -= n
            for st in conn.streams.values():
                st.error = error_kind(e)
                st.t_end = time.time_ns()
                self._finished()
            conn.streams = {}
            return
        self.connecting -= n
        self.open["proxy"] += n
        conn.sock = s
        for st in conn.streams.values():
            st.sock = conn
        self.loop.add_reader(s.fileno(), self.on_read_h2, conn)

    def on_read_h2(self, conn: H2Conn):
        try:
            got = self.receive(conn.sock, 262144)
        except OSError as e:
            self.finish_h2(conn, error_kind(e))
            return
        if got is None:
            return
        data, t = got
        if not data:
            self.finish_h2(conn, "connection closed early")
            return
        buf = conn.buf
        buf += data
        pos, replies = 0, []
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            end = pos + 9 + length
            if end > len(buf):
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9:end])
            pos = end
            st = conn.streams.get(sid)
            if ftype == H2_DATA:
                # Streams are far below a stream's window; the connection's is given back
                # before it runs out, however long the run.
                conn.unacknowledged += length
                if conn.unacknowledged >= H2_MAX_WINDOW // 2:
                    replies.append(h2_frame(H2_WINDOW_UPDATE, 0, 0, conn.unacknowledged.to_bytes(4, "big")))
                    conn.unacknowledged = 0
            if ftype in (H2_DATA, H2_HEADERS) and flags & H2_PADDED and payload:
                payload = payload[1:len(payload) - payload[0]]
            if ftype == H2_DATA and st is not None:
                st.pieces.append((t, payload))
            elif ftype == H2_HEADERS and st is not None and st.h2_status is None:
                block = payload[5:] if flags & H2_PRIORITY else payload
                st.h2_status = H2_STATIC_STATUS.get(block[0], 0) if block else 0
            elif ftype == H2_RST_STREAM and st is not None:
                self.end_h2_stream(conn, sid, f"RST_STREAM {int.from_bytes(payload[:4], 'big')}")
                continue
            elif ftype == H2_SETTINGS and not flags & H2_ACK:
                replies.append(h2_frame(H2_SETTINGS, H2_ACK, 0))
            elif ftype == H2_PING and not flags & H2_ACK:
                replies.append(h2_frame(H2_PING, H2_ACK, 0, payload))
            elif ftype == H2_GOAWAY:
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                for gone in [i for i in conn.streams if i > last]:
                    self.end_h2_stream(conn, gone, f"GOAWAY {int.from_bytes(payload[4:8], 'big')}")
            if ftype in (H2_DATA, H2_HEADERS) and flags & H2_END_STREAM and st is not None:
                st.h2_ended = True
                self.end_h2_stream(conn, sid, None)
        del buf[:pos]
        if conn.sock is None:
            return
        if replies:
            try:
                conn.sock.send(b"".join(replies))  # a few bytes: fits the send buffer
            except OSError as e:
                self.finish_h2(conn, error_kind(e))
                return
        if not conn.streams:
            self.finish_h2(conn, None)

    def end_h2_stream(self, conn: H2Conn, sid: int, error):
        st = conn.streams.pop(sid)
        st.sock = None
        st.t_end = time.time_ns()
        st.error = error
        self.open["proxy"] -= 1
        self._finished()

    def finish_h2(self, conn: H2Conn, error):
        """Closes the connection; its streams still open end with `error`."""
        for sid in list(conn.streams):
            self.end_h2_stream(conn, sid, error)
        if conn.sock is not None:
            self.loop.remove_reader(conn.sock.fileno())
            conn.sock.close()
            conn.sock = None


def parse_partial(pieces):
    """bench_proxy.Timed.parse, tolerant of a body cut off anywhere: (status, events, complete, body),
    events = the complete SSE events received, [(type, data or None, receive time ns)]."""
    raw = b"".join(d for _, d in pieces)
    t_raw = receive_clock(pieces)
    hdr_end = raw.find(b"\r\n\r\n")
    if hdr_end < 0:
        raise ValueError("no complete response header")
    head = raw[:hdr_end].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    chunked = any(h.lower().startswith("transfer-encoding:") and "chunked" in h.lower() for h in head[1:])
    pos = hdr_end + 4
    body, segs, complete = bytearray(), [], False
    if chunked:
        while True:
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(raw[pos:eol].split(b";")[0], 16)
            if size == 0:
                complete = raw.find(b"\r\n", eol + 2) >= 0
                break
            if eol + 2 + size > len(raw):
                segs.append((len(body), eol + 2))
                body += raw[eol + 2:]
                break
            segs.append((len(body), eol + 2))
            body += raw[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2
    else:
        segs.append((0, pos))
        body += raw[pos:]
        complete = True
    seg_starts = [s for s, _ in segs]
    body = bytes(body)

    def time_at(off):
        i = bisect.bisect_right(seg_starts, off) - 1
        return t_raw(segs[i][1] + off - segs[i][0])

    return status, (sse_events(body, time_at) if status == 200 else []), complete, body


def parse_h2(st: Stream):
    """parse_partial for a stream carried by h2c: its pieces are its DATA frames' payloads."""
    body = b"".join(d for _, d in st.pieces)
    status = st.h2_status or 0
    return status, (sse_events(body, receive_clock(st.pieces)) if status == 200 else []), st.h2_ended, body


def receive_clock(pieces):
    """For [(receive time, bytes)]: the receive time of the byte at an offset of their concatenation."""
    ends, times, n = [], [], 0
    for t, d in pieces:
        n += len(d)
        ends.append(n)
        times.append(t)
    return lambda off: times[min(bisect.bisect_right(ends, off), len(times) - 1)]


def sse_events(body: bytes, time_at):
    """The complete SSE events of `body`: [(type, data or None, time_at(offset of the event's end))]."""
    events, start = [], 0
    while True:
        end = body.find(b"\n\n", start)
        if end < 0:
            break
        etype, data = None, []
        for line in body[start:end].decode().split("\n"):
            if line.startswith("event:"):
                etype = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        events.append((etype, json.loads("\n".join(data)) if data else None, time_at(end + 1)))
        start = end + 2
    return events


def analyse_stream(st: Stream, window=None):
    """Sets st.ok (or st.error), st.chars, st.win_chars (window = (start, end) ns), st.rng for probes."""
    if not st.pieces:
        st.error = st.error or "no response"
        return
    st.t_first, st.t_last = st.pieces[0][0], st.pieces[-1][0]
    if window is None:
        return
    try:
        status, events, complete, body = parse_h2(st) if st.h2 else parse_partial(st.pieces)
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        st.error = st.error or f"malformed response ({type(e).__name__})"
        return
    rng = text_ranges(events)
    st.chars = rng[-1][1] if rng else 0
    st.win_chars = chars_at(rng, window[1]) - chars_at(rng, window[0])
    if st.probe is not None:
        st.rng = rng
    if st.error:
        return
    if status != 200:
        try:
            e = json.loads(body)["error"]
            st.error = f"HTTP {status} {e.get('type')}: {str(e.get('message'))[:100]}"
        except (ValueError, KeyError, TypeError, AttributeError):
            st.error = f"HTTP {status or '(h2: not 200)'}"
    elif any(e[0] == "error" for e in events):
        st.error = "SSE error event"
    elif not complete:
        st.error = "body cut off (connection closed early)"
    elif not events or events[-1][0] != "message_stop":
        st.error = "no message_stop"
    elif "".join(r[3] for r in rng) != st.text:
        st.error = "text differs"
    else:
        st.ok = True


def chars_at(rng, t):
    """Text characters the client had received at time t."""
    i = bisect.bisect_right([r[2] for r in rng], t)
    return rng[i - 1][1] if i else 0


def probe_latencies(st: Stream, taps: list[int]):
    """[(t_sent, latency_ns, censored)] for the TAB events of a probe stream, or None on mismatch.
    A TAB the mock sent that the client never received counts (close time - sent), censored."""
    offsets = [i for i, c in enumerate(st.text) if c == "\t"]
    got = [o for o in offsets if o < st.chars]
    if len(taps) < len(got) or len(taps) > len(offsets) or (st.ok and len(taps) != len(offsets)):
        return None
    starts = [r[0] for r in st.rng]
    out = []
    for k, t_sent in enumerate(taps):
        if k < len(got):
            r = st.rng[bisect.bisect_right(starts, got[k]) - 1]
            out.append((t_sent, r[2] - t_sent, False))
        elif t_sent < st.t_end:  # sent before the client gave up on the stream
            out.append((t_sent, st.t_end - t_sent, True))
    return out


# ---------------------------------------------------------------------------------------------


def fmt_kib(kib: float) -> str:
    return f"{kib / 1024:,.1f} MiB" if kib >= 10240 else f"{kib:,.0f} KiB"


async def run(args, info, results, tmp, bins):
    loop = asyncio.get_running_loop()
    proxy_bin, mock_bin = bins
    n_proxy, n_direct = args.streams, args.direct
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    # ---- mock
    port_file = os.path.join(tmp, "mock.port")
    mock_cmd = [mock_bin, "--listen", "127.0.0.1:0", "--port-file", port_file, "--no-record",
                "--no-split-writes", "--threads", str(args.mock_threads)]
    mock = spawn(mock_cmd, nofile=nofile, stdout=subprocess.DEVNULL,
                 stderr=open(os.path.join(tmp, "mock.log"), "w"))
    deadline = time.monotonic() + 10
    while not os.path.exists(port_file):
        if mock.poll() is not None or time.monotonic() > deadline:
            raise Abort(f"streammask-mock did not start (see {tmp}/mock.log)")
        await asyncio.sleep(0.02)
    mock_port = int(open(port_file).read())

    # ---- proxy
    px_port, px_admin = free_port(), None
    px_log = os.path.join(tmp, "proxy.log")
    t_spawn = time.monotonic()
    if args.proxy == "streammask":
        px_admin = free_port()
        cfg_path = os.path.join(tmp, "streammask.toml")
        with open(cfg_path, "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{px_port}"\nadmin = "127.0.0.1:{px_admin}"\n'
                    f'threads = {args.proxy_threads}\n' + ("h2c = true\n" if args.downstream == "h2c" else "") +
                    f'\n[upstream]\nurl = "http://127.0.0.1:{mock_port}"\n')
        px_cmd = [proxy_bin, "run", "--config", cfg_path]
        env = dict(os.environ, STREAMMASK_PLACEHOLDER_KEY=PLACEHOLDER_KEY, RUST_LOG=args.rust_log)
        px = spawn(px_cmd, nofile=nofile, env=env, stdout=subprocess.DEVNULL, stderr=open(px_log, "w"))
        await loop.run_in_executor(None, wait_ready, f"http://127.0.0.1:{px_admin}/readyz", px,
                                   "streammask", args.start_timeout)
        info["proxy_config"] = open(cfg_path).read()
        info["proxy_cmd"] = f"STREAMMASK_PLACEHOLDER_KEY=… RUST_LOG={args.rust_log} " + shlex.join(px_cmd)
    else:
        px_cmd = [proxy_bin, "--listen", f"127.0.0.1:{px_port}", "--upstream", f"127.0.0.1:{mock_port}",
                  "--threads", str(args.proxy_threads)]
        px = spawn(px_cmd, nofile=nofile, env=dict(os.environ, RUST_LOG=args.rust_log),
                   stdout=subprocess.DEVNULL, stderr=open(px_log, "w"))
        await loop.run_in_executor(None, wait_ready, px_port, px, args.proxy, args.start_timeout)
        info["proxy_cmd"] = shlex.join(px_cmd)
    info["proxy_startup_s"] = round(time.monotonic() - t_spawn, 1)
    info["mock_cmd"] = shlex.join(mock_cmd)
    info["proxy_nofile"] = open(f"/proc/{px.pid}/limits").read().split("Max open files")[1].split()[:2]
    print(f"# mock :{mock_port}  {args.proxy} :{px_port}" + (f" admin :{px_admin}" if px_admin else "") +
          f" (ready {info['proxy_startup_s']} s after spawn; RLIMIT_NOFILE "
          f"{'/'.join(info['proxy_nofile'])})", flush=True)

    async def one(path: str, text: str, probe_id=None, interval=None):
        port = px_port if path == "proxy" else mock_port
        tag = f"sbprobe-{probe_id:06d}" if probe_id is not None else "warm-up"
        st = Stream(-1, path, probe_id, text, make_request(
            port, text, args.interval_ms if interval is None else interval, tag), "127.0.0.1")
        c = Client(loop)
        await c.start(st, ("127.0.0.1", port), 10)
        if st.sock is not None:
            try:
                await asyncio.wait_for(c.done.wait(), 30)
            except asyncio.TimeoutError:
                c.abort_all([st])
        analyse_stream(st, (0, 0))
        return st

    # ---- where the TAB marker sits inside a written event ("<hex size>\r\n" + event)
    warm = await one("direct", stream_text(40, True), interval=0)
    if not warm.ok:
        raise Abort(f"warm-up stream to the mock failed: {warm.error}")
    raw = b"".join(d for _, d in warm.pieces)
    i = raw.find(MARK)
    ev_start = raw.rfind(b"event: content_block_delta", 0, i)
    size_line = raw.rfind(b"\r\n", 0, ev_start - 2) + 2
    if i < 0 or ev_start < 0 or not re.fullmatch(rb"[0-9a-f]+\r\n", raw[size_line:ev_start]):
        raise Abort("cannot locate a TAB text delta in the mock's reply (has the event format changed?)")
    mark_offset = i - size_line

    # ---- capture
    cap, cap_note = None, None
    if args.probes > 0 or n_direct > 0:
        try:
            cap = Capture(mock_port, mark_offset)
            loop.add_reader(cap.sock.fileno(), cap.drain)
        except OSError as e:
            cap_note = f"no packet capture ({type(e).__name__}: {e}; needs CAP_NET_RAW)"
            print(f"# WARNING: {cap_note}: latency not measured", flush=True)

    # ---- warm-up; checks the capture end to end on both paths
    for path, pid in (("direct", 999998), ("proxy", 999999), ("proxy", None)):
        st = await one(path, stream_text(60, pid is not None), pid, interval=20)
        if not st.ok:
            raise Abort(f"warm-up stream ({path}) failed: {st.error} (log: {px_log})")
        if cap and pid is not None:
            await asyncio.sleep(0.05)
            cap.drain()
            lat = probe_latencies(st, cap.taps.get(pid, []))
            if lat is None:
                cap_note = (f"the packet capture saw {len(cap.taps.get(pid, []))} of "
                            f"{st.text.count(chr(9))} TAB events of the {path} warm-up stream")
                print(f"# WARNING: {cap_note}: latency not measured", flush=True)
                loop.remove_reader(cap.sock.fileno())
                cap.sock.close()
                cap = None
            else:
                print(f"# capture check ({path}): {len(lat)} TAB events, mock write -> client "
                      f"{statistics.median(x[1] for x in lat) / 1000:.0f} µs median", flush=True)
    if cap:
        cap.taps.clear()
    results["capture_note"] = cap_note

    await asyncio.sleep(1.0)
    rss_base = proc_status(px.pid, "VmRSS")
    fds_base = fd_count(px.pid)
    mock_rss_base = proc_status(mock.pid, "VmRSS")
    cost0 = event_cost_snapshot(px_admin) if px_admin else None
    cpu0 = {"proxy": proc_cpu_seconds(px.pid), "mock": proc_cpu_seconds(mock.pid)}
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    print(f"# baseline after warm-up: proxy VmRSS {fmt_kib(rss_base)}, {fds_base} fds; "
          f"mock VmRSS {fmt_kib(mock_rss_base)}", flush=True)

    # ---- plan: who opens when; every stream ends at the same planned time
    total = n_proxy + n_direct
    batches = math.ceil(total / args.batch)
    ramp_s = (batches - 1) * args.batch_interval
    step_s = (args.interval_ms + args.mock_overshoot_ms) / 1000
    n_probes = min(args.probes, n_proxy) if cap else 0
    probe_at = {int(i * n_proxy / n_probes) for i in range(n_probes)} if n_probes else set()
    direct_at = {int((i + 0.5) * total / n_direct) for i in range(n_direct)} if n_direct else set()
    sources = [f"127.0.0.{i + 1}" for i in range(args.sources)]
    t0 = time.monotonic()
    t_end_plan = t0 + ramp_s + args.hold_secs + 0.5
    print(f"\n## opening {n_proxy} streams through {args.proxy}" +
          (f" (h2c, {args.h2_streams} per connection, probes on HTTP/1.1)" if args.downstream == "h2c" else "") +
          f" and {n_direct} direct to the mock: "
          f"{args.batch} per {args.batch_interval} s ({batches} batches, ~{ramp_s:.1f} s), then all "
          f"held for {args.hold_secs:g} s; one event per {args.interval_ms} ms "
          f"(~{n_proxy * 1000 / args.interval_ms:,.0f} upstream events/s); {n_probes} proxied probes; "
          f"sources {sources[0]}..{sources[-1]}", flush=True)

    client = Client(loop)
    streams: list[Stream] = []
    samples = []  # (time ns, proxy VmRSS KiB, open proxied, open direct, proxy CPU s, mock CPU s)
    peak_fds = [0, 0]

    async def sampler():
        k = 0
        while True:
            samples.append((time.time_ns(), proc_status(px.pid, "VmRSS"), client.open["proxy"],
                            client.open["direct"], proc_cpu_seconds(px.pid), proc_cpu_seconds(mock.pid)))
            if k % 8 == 0 and client.open["proxy"] >= peak_fds[1]:
                peak_fds[:] = [fd_count(px.pid), client.open["proxy"]]
            k += 1
            await asyncio.sleep(0.25)

    def progress(prefix=""):
        return (f"  t={time.monotonic() - t0:5.1f}s {prefix}open {client.open['proxy']:>6} proxied + "
                f"{client.open['direct']} direct, connecting {client.connecting:>5}, proxy VmRSS "
                f"{fmt_kib(proc_status(px.pid, 'VmRSS'))}, CPU proxy {proc_cpu_seconds(px.pid) - cpu0['proxy']:.1f} s"
                f" mock {proc_cpu_seconds(mock.pid) - cpu0['mock']:.1f} s")

    sampler_task = asyncio.create_task(sampler())
    tasks = []
    # --downstream h2c: the proxied streams that are not probes share h2c connections, up to
    # --h2-streams per connection, each connection opened with the streams of one batch.
    h2c = args.downstream == "h2c"
    h2_group: dict[int, Stream] = {}

    def open_h2_group():
        if h2_group:
            conn = H2Conn(dict(h2_group), next(iter(h2_group.values())).src)
            h2_group.clear()
            tasks.append(asyncio.create_task(client.start_h2(conn, ("127.0.0.1", px_port), args.connect_timeout)))
    gc.disable()
    idx = proxied = probe_id = 0
    for b in range(batches):
        await asyncio.sleep(max(0.0, t0 + b * args.batch_interval - time.monotonic()))
        chars = max(1, round((t_end_plan - time.monotonic()) / step_s) - EVENTS_BEFORE_TEXT - EVENTS_AFTER_TEXT)
        for _ in range(min(args.batch, total - idx)):
            probe = None
            if idx in direct_at or proxied >= n_proxy:
                path, probe = "direct", probe_id
                probe_id += 1
            else:
                path = "proxy"
                if proxied in probe_at:
                    probe = probe_id
                    probe_id += 1
                proxied += 1
            text = stream_text(chars, probe is not None)
            port = px_port if path == "proxy" else mock_port
            tag = f"sbprobe-{probe:06d}" if probe is not None else f"stream-{idx:06d}"
            if h2c and path == "proxy" and probe is None:
                sid = 2 * len(h2_group) + 1
                st = Stream(idx, path, probe, text, H2Request(sid, port, text, args.interval_ms, tag),
                            sources[idx % len(sources)])
                h2_group[sid] = st
                if len(h2_group) == args.h2_streams:
                    open_h2_group()
            else:
                st = Stream(idx, path, probe, text, make_request(port, text, args.interval_ms, tag),
                            sources[idx % len(sources)])
                tasks.append(asyncio.create_task(client.start(st, ("127.0.0.1", port), args.connect_timeout)))
            streams.append(st)
            idx += 1
        open_h2_group()
        if b % max(1, batches // 10) == 0 or b == batches - 1:
            print(progress(f"started {idx:>6}, "), flush=True)
    await asyncio.gather(*tasks)
    t_ramp_done = time.monotonic()
    print(f"  ramp done in {t_ramp_done - t0:.1f} s: {client.open['proxy']} proxied and "
          f"{client.open['direct']} direct streams open, {sum(1 for s in streams if s.error)} failed to open",
          flush=True)

    # ---- hold: until every stream has ended, or the deadline
    last_report = time.monotonic()
    hard_deadline = t_end_plan + max(30.0, 0.5 * (args.hold_secs + ramp_s), 10 * step_s)
    while not client.done.is_set():
        try:
            await asyncio.wait_for(client.done.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
        now = time.monotonic()
        if now - last_report >= 5:
            last_report = now
            print(progress(), flush=True)
        if now > hard_deadline:
            print(f"  deadline ({hard_deadline - t0:.0f} s): {sum(client.open.values())} streams still open; "
                  "closing them", flush=True)
            if cap:
                cap.drain()
            client.abort_all(streams)
            break
    t_all_done = time.monotonic()
    sampler_task.cancel()
    cpu1 = {"proxy": proc_cpu_seconds(px.pid), "mock": proc_cpu_seconds(mock.pid)}
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cost1 = event_cost_snapshot(px_admin) if px_admin else None
    hwm = proc_status(px.pid, "VmHWM")
    if cap:
        cap.drain()
        loop.remove_reader(cap.sock.fileno())
    await asyncio.sleep(2.0)
    rss_after = proc_status(px.pid, "VmRSS")
    fds_after = fd_count(px.pid)
    print(f"  all streams ended {t_all_done - t0:.1f} s after the first was opened; checking ...", flush=True)

    # ---- analysis
    # The all-open window: every stream that got a 200 and ran to its end (or to the deadline) had
    # its first byte and had not ended yet.
    for st in streams:
        analyse_stream(st)  # first and last byte times only
    held = [s for s in streams if s.t_first is not None and s.started_200() and (
        s.error == TIMEOUT_KIND or (s.error is None and s.body_complete()))]
    w_start = max((s.t_first for s in held), default=0)
    w_end = min((s.t_last if s.error is None else s.t_end for s in held), default=0)
    window_s = max(0.0, (w_end - w_start) / 1e9)
    for st in streams:
        analyse_stream(st, (w_start, w_end))
        if st.probe is None:
            st.pieces = []  # the rest is not needed; free it
    gc.enable()
    ok = [s for s in streams if s.ok]
    errors: dict[str, int] = {}
    for s in streams:
        if not s.ok:
            key = f"{s.path}: {s.error}"
            errors[key] = errors.get(key, 0) + 1
    in_window = [x for x in samples if w_start <= x[0] <= w_end] or samples[-1:]
    peak = max(in_window, key=lambda x: x[1])
    rss_peak, open_at_peak = peak[1], peak[2]
    per_stream_kib = (rss_peak - rss_base) / max(open_at_peak, 1)
    cpu_window = {}
    if len(in_window) >= 2 and window_s > 0:
        a, b = in_window[0], in_window[-1]
        dt = (b[0] - a[0]) / 1e9
        cpu_window = {"seconds": dt, "proxy_cores": (b[4] - a[4]) / dt, "mock_cores": (b[5] - a[5]) / dt}
    win_events = sum(s.win_chars for s in streams if s.path == "proxy")
    win_rate = win_events / window_s if window_s > 0 else 0.0
    if cpu_window and win_rate:
        cpu_window["proxy_us_per_event"] = cpu_window["proxy_cores"] / win_rate * 1e6
    # throughput inside the window: text (= upstream) events delivered per second, per probe stream
    rate = {"proxy": [], "direct": []}
    proxy_cpu = cpu1["proxy"] - cpu0["proxy"]
    mock_cpu = cpu1["mock"] - cpu0["mock"]
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    run_s = t_all_done - t0
    delivered = sum(s.chars for s in streams if s.path == "proxy")
    expected = sum(len(s.text) for s in streams if s.path == "proxy")

    lat = {"proxy": [], "direct": [], "proxy_all": [], "direct_all": []}
    censored = {"proxy": 0, "direct": 0}
    mismatch = {"proxy": 0, "direct": 0}
    for st in streams:
        if st.probe is None or st.rng is None:
            continue
        if window_s > 0:
            rate[st.path].append((chars_at(st.rng, w_end) - chars_at(st.rng, w_start)) / window_s)
        if not cap:
            continue
        got = probe_latencies(st, cap.taps.get(st.probe, []))
        if got is None:
            mismatch[st.path] += 1
            continue
        for t_sent, d, cens in got:
            lat[st.path + "_all"].append(d)
            if w_start <= t_sent <= w_end:
                lat[st.path].append(d)
                censored[st.path] += cens
    gaps = []  # the mock's pace, seen on the direct streams
    for st in streams:
        if st.path == "direct" and st.rng:
            times = [r[2] for r in st.rng]
            gaps.extend((b - a) / 1e6 for a, b in zip(times, times[1:]))
    ttfb = {p: [(s.t_first - s.t_req) / 1e6 for s in streams if s.path == p and s.t_first and s.t_req]
            for p in ("proxy", "direct")}

    res = {
        "proxy": args.proxy, "streams_proxy": n_proxy, "streams_direct": n_direct, "probes": n_probes,
        "ok_proxy": sum(1 for s in ok if s.path == "proxy"), "ok_direct": sum(1 for s in ok if s.path == "direct"),
        "errors": errors, "ramp_s": round(t_ramp_done - t0, 2), "run_s": round(run_s, 2),
        "all_open_window_s": round(window_s, 2),
        "rss_baseline_kib": rss_base, "rss_peak_kib": rss_peak, "rss_hwm_kib": hwm,
        "rss_after_close_kib": rss_after, "open_at_peak": open_at_peak, "rss_per_stream_kib": per_stream_kib,
        "fds_baseline": fds_base, "fds_peak": peak_fds[0], "fds_peak_open_streams": peak_fds[1],
        "fds_after_close": fds_after, "mock_rss_baseline_kib": mock_rss_base,
        "cpu_s": {"proxy": proxy_cpu, "mock": mock_cpu, "client": client_cpu},
        "cpu_window": cpu_window, "window_events_per_s_proxied": win_rate,
        # what the mock sent: proxied streams x the pace it kept on the direct streams in the window
        "window_events_per_s_offered": sum(1 for s in held if s.path == "proxy") *
        (statistics.mean(rate["direct"]) if rate["direct"] else 1000 / args.interval_ms),
        "text_events_delivered_proxied": delivered, "text_events_planned_proxied": expected,
        "proxy_cpu_us_per_delivered_event": proxy_cpu / max(delivered, 1) * 1e6,
        "window_rate_per_stream": {p: {"p50": pct(v, 50), "p1": pct(v, 1), "n": len(v)} for p, v in rate.items()},
        "event_cost": event_cost_between(cost0, cost1) if cost0 else None,
        "mock_gap_ms": {"p50": pct(gaps, 50), "p99": pct(gaps, 99),
                        "mean": statistics.mean(gaps) if gaps else None, "n": len(gaps)},
        "ttfb_ms": {p: {"p50": pct(v, 50), "p99": pct(v, 99)} for p, v in ttfb.items()},
        "capture": (cap.stats() | {"packets": cap.packets, "mismatch": mismatch}) if cap else None,
        "rss_samples": [(round((x[0] - samples[0][0]) / 1e9, 2), x[1], x[2]) for x in samples],
    }
    us = lambda ns: ns / 1000.0  # noqa: E731
    if lat["proxy"] and lat["direct"]:
        P, D = lat["proxy"], lat["direct"]
        res["latency_us"] = {
            "window": {"proxy_samples": len(P), "direct_samples": len(D),
                       "proxy_censored": censored["proxy"], "direct_censored": censored["direct"],
                       "proxy_p50": us(pct(P, 50)), "proxy_p99": us(pct(P, 99)), "proxy_max": us(max(P)),
                       "direct_p50": us(pct(D, 50)), "direct_p99": us(pct(D, 99)),
                       "added_p50": us(pct(P, 50) - pct(D, 50)), "added_p99": us(pct(P, 99) - pct(D, 99))},
            "whole_run": {"proxy_samples": len(lat["proxy_all"]), "direct_samples": len(lat["direct_all"]),
                          "added_p50": us(pct(lat["proxy_all"], 50) - pct(lat["direct_all"], 50)),
                          "added_p99": us(pct(lat["proxy_all"], 99) - pct(lat["direct_all"], 99))},
        }
    results["run"] = res
    results["proxy_log"] = _log_tail(px_log)
    return res


def _log_tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return {}
    emfile = [x for x in lines if "Too many open files" in x or "os error 24" in x]
    problems = [x for x in lines if (re.search(r"\b(ERROR|WARN)\b", x) and "no one can approve" not in x)
                or re.search(r"\bstatus=5\d\d\b", x)]
    return {"lines": len(lines), "emfile_lines": len(emfile), "tail": [x.rstrip()[:300] for x in lines[-n:]],
            "first_problems": [re.sub(r"\x1b\[[0-9;]*m", "", x).rstrip()[:300] for x in (emfile or problems)[:5]]}


def report(args, info, results) -> int:
    r = results["run"]
    rows = []
    n_err = sum(r["errors"].values())
    name = args.proxy + (f" (h2c, {args.h2_streams} per connection; probes HTTP/1.1)"
                         if args.downstream == "h2c" else "")
    rows.append((f"streams through {name}: ok / opened", f"{r['ok_proxy']:,} / {r['streams_proxy']:,}", "all ok"))
    rows.append(("direct streams (calibration): ok / opened", f"{r['ok_direct']} / {r['streams_direct']}", "-"))
    rows.append(("errors", ", ".join(f"{k}: {v:,}" for k, v in sorted(r["errors"].items())) or "0", "0"))
    rows.append(("ramp; then all streams open together for",
                 f"{r['ramp_s']:.1f} s; {r['all_open_window_s']:.1f} s", f"hold {args.hold_secs:g} s"))
    rows.append(("proxy VmRSS: baseline / peak all-open / VmHWM / 2 s after close",
                 f"{fmt_kib(r['rss_baseline_kib'])} / {fmt_kib(r['rss_peak_kib'])} / "
                 f"{fmt_kib(r['rss_hwm_kib'])} / {fmt_kib(r['rss_after_close_kib'])}", "-"))
    rows.append((f"RSS growth per open stream ((peak - baseline) / {r['open_at_peak']:,})",
                 f"{r['rss_per_stream_kib']:.1f} KiB", f"≤ {RSS_TARGET_KIB} KiB"))
    rows.append(("proxy fds: baseline / at peak (open streams) / after close",
                 f"{r['fds_baseline']} / {r['fds_peak']} ({r['fds_peak_open_streams']:,}) / {r['fds_after_close']}",
                 "-"))
    c = r["cpu_s"]
    rows.append(("CPU s over the run: proxy / mock / this client",
                 f"{c['proxy']:.1f} / {c['mock']:.1f} / {c['client']:.1f} (run {r['run_s']:.0f} s, "
                 f"{info['nproc']} CPUs)", "-"))
    cw = r["cpu_window"]
    if cw:
        rows.append(("CPU while all open: proxy / mock (cores busy)",
                     f"{cw['proxy_cores']:.2f} / {cw['mock_cores']:.2f}", "-"))
    rows.append(("upstream events/s delivered through the proxy while all open / sent by the mock",
                 f"{r['window_events_per_s_proxied']:,.0f} / {r['window_events_per_s_offered']:,.0f}", "all"))
    if cw.get("proxy_us_per_event"):
        rows.append(("proxy CPU per upstream event while all open", f"{cw['proxy_us_per_event']:.1f} µs", "-"))
    rows.append(("text events delivered through the proxy / planned",
                 f"{r['text_events_delivered_proxied']:,} / {r['text_events_planned_proxied']:,}", "all"))
    rows.append(("proxy CPU per delivered upstream event, whole run (incl. requests)",
                 f"{r['proxy_cpu_us_per_delivered_event']:.1f} µs", "-"))
    wr = r["window_rate_per_stream"]
    if wr["proxy"]["n"] and wr["direct"]["n"]:
        rows.append(("events/s per stream while all open: proxied p50 (p1) / direct p50",
                     f"{wr['proxy']['p50']:.2f} ({wr['proxy']['p1']:.2f}) / {wr['direct']['p50']:.2f}",
                     f"{1000 / args.interval_ms:.1f}"))
    ec = r.get("event_cost")
    if ec and ec.get("events"):
        rows.append(("streammask's own cost per SSE read (mean; p50, p99 bucket)",
                     f"{ec['mean_us']:.2f}; {fmt_le(ec['p50_le_us'])}, {fmt_le(ec['p99_le_us'])} µs "
                     f"({ec['events']:,})", "-"))
    lat = r.get("latency_us")
    if lat:
        w = lat["window"]
        ge = "≥ " if w["proxy_censored"] else ""
        rows.append(("added latency per SSE event, all open (p50 / p99)",
                     f"{ge}{w['added_p50']:,.0f} / {ge}{w['added_p99']:,.0f} µs", "reported"))
        rows.append(("  proxied: mock write -> client (p50 / p99 / max; samples)",
                     f"{w['proxy_p50']:,.0f} / {w['proxy_p99']:,.0f} / {w['proxy_max']:,.0f} µs; "
                     f"{w['proxy_samples']:,}" + (f" ({w['proxy_censored']:,} never delivered)" if ge else ""), "-"))
        rows.append(("  direct: mock write -> client, the floor (p50 / p99; samples)",
                     f"{w['direct_p50']:.0f} / {w['direct_p99']:.0f} µs; {w['direct_samples']:,}", "-"))
        a = lat["whole_run"]
        rows.append(("added latency per SSE event, whole run incl. ramp (p50 / p99)",
                     f"{ge}{a['added_p50']:,.0f} / {ge}{a['added_p99']:,.0f} µs", "-"))
    else:
        rows.append(("added latency per SSE event", "not measured: " + (results.get("capture_note") or
                                                                       "no probe samples in the window"), "-"))
    t = r["ttfb_ms"]
    rows.append(("request to first byte, proxied / direct (p50; p99)",
                 f"{t['proxy']['p50']:.1f} / {t['direct']['p50']:.1f} ms; "
                 f"{t['proxy']['p99']:.1f} / {t['direct']['p99']:.1f} ms", "-"))
    g = r["mock_gap_ms"]
    if g["n"]:
        rows.append(("mock's pace (direct streams): gap between events p50 / p99",
                     f"{g['p50']:.1f} / {g['p99']:.1f} ms", f"{args.interval_ms} ms"))
    cp = r.get("capture")
    if cp:
        rows.append(("capture: packets / kernel drops / probes with mismatched TAB count",
                     f"{cp['packets']:,} / {cp.get('kernel_drops', '?')} / "
                     f"{cp['mismatch']['proxy']} proxied, {cp['mismatch']['direct']} direct", "0 drops"))
    w1 = max(len(x[0]) for x in rows)
    w2 = max(len(x[1]) for x in rows)
    print("\n## summary")
    print(f"machine: {info['nproc']} CPUs ({info['affinity']} usable), {info['cpu']}, kernel {info['kernel']}, "
          f"{info['mem']} RAM; RLIMIT_NOFILE {info['rlimit_nofile'][0]}")
    print(f"build:   git {info['git']}, binaries {info['binaries']}; {args.proxy} ready "
          f"{info.get('proxy_startup_s', '?')} s after spawn")
    print(f"command: {info['command']}")
    print(f"\n{'metric':<{w1}}  {'value':<{w2}}  target")
    print(f"{'-' * w1}  {'-' * w2}  ------")
    for a, b, c in rows:
        print(f"{a:<{w1}}  {b:<{w2}}  {c}")
    log = results.get("proxy_log") or {}
    if log.get("emfile_lines"):
        print(f"\nproxy log: {log['emfile_lines']} lines about too many open files (EMFILE)")
    if n_err and log.get("first_problems"):
        print("proxy log, first problems:\n  " + "\n  ".join(log["first_problems"]))
    print(f"load:    {info['loadavg_start']} at start, {loadavg()} at end (1/5/15 min)")
    failed = []
    if n_err:
        failed.append(f"{n_err:,} streams failed")
    if r["rss_per_stream_kib"] > RSS_TARGET_KIB and not args.smoke:  # smoke: too few streams to judge
        failed.append(f"RSS growth {r['rss_per_stream_kib']:.1f} KiB per stream > {RSS_TARGET_KIB} KiB")
    if not failed:
        verdict = f"{r['ok_proxy']:,} streams held with no errors" + (
            " (smoke: RSS per stream reported, not judged)" if args.smoke else ", RSS within budget")
    else:
        verdict = "TARGET MISSED: " + "; ".join(failed)
    print("verdict: " + verdict)
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=10000, help="streams through the proxy (default 10000)")
    ap.add_argument("--direct", type=int, default=None,
                    help="direct-to-mock calibration streams (default 50; 10 with --smoke)")
    ap.add_argument("--probes", type=int, default=None,
                    help="proxied streams whose events are timed (default streams/20, at most 500)")
    ap.add_argument("--interval-ms", type=int, default=100, help="mock pause between events (default 100)")
    ap.add_argument("--hold-secs", type=float, default=30, help="time all streams are open together")
    ap.add_argument("--batch", type=int, default=500, help="streams opened per batch during ramp-up")
    ap.add_argument("--batch-interval", type=float, default=0.5, help="seconds between batches")
    ap.add_argument("--sources", type=int, default=None,
                    help="client source addresses 127.0.0.1..127.0.0.K (default 4, more if the "
                         "ephemeral port range needs it)")
    ap.add_argument("--proxy", choices=("streammask", "pingora"), default="streammask",
                    help="pingora: streammask-bench-pingora, plain Pingora (no masking) for comparison")
    ap.add_argument("--downstream", choices=("http1", "h2c"), default="http1",
                    help="how the proxied streams reach the proxy: http1, a connection each (default); "
                         "h2c, HTTP/2 over cleartext (`[server] h2c = true`), --h2-streams per "
                         "connection, as a load balancer or an HTTP/2 client sends them (probes stay "
                         "on HTTP/1.1: their events are timed per socket)")
    ap.add_argument("--h2-streams", type=int, default=100,
                    help="streams per h2c connection (default 100, the proxy's SETTINGS_MAX_CONCURRENT_STREAMS)")
    ap.add_argument("--proxy-threads", type=int, default=2, help="server threads of the proxy (default 2)")
    ap.add_argument("--mock-threads", type=int, default=1)
    ap.add_argument("--rust-log", default="warn", help="RUST_LOG of the proxy (its log is summarised on errors)")
    ap.add_argument("--mock-overshoot-ms", type=float, default=1.4,
                    help="how much longer than --interval-ms the mock's pause really is (timer "
                         "granularity); only used to plan text lengths so that streams end together")
    ap.add_argument("--connect-timeout", type=float, default=15)
    ap.add_argument("--start-timeout", type=float, default=240,
                    help="seconds to wait for the proxy (set STREAMMASK_HS_CACHE_DIR to make it fast)")
    ap.add_argument("--smoke", action="store_true",
                    help="200 streams held 3 s (batch 100 per 0.25 s): a CI check, well under a minute")
    ap.add_argument("--force", action="store_true",
                    help="run even if RLIMIT_NOFILE is too low for the proxy (to see how it fails)")
    ap.add_argument("--nice", type=int, default=0, help="nice value for this script and its children")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
    if args.smoke:
        for k, v in (("streams", 200), ("hold_secs", 3), ("batch", 100), ("batch_interval", 0.25),
                     ("direct", 10), ("probes", 20)):
            if k not in given:
                setattr(args, k, v)
    if args.direct is None:
        args.direct = 50
    if args.probes is None:
        args.probes = min(500, max(1, args.streams // 20))
    if args.streams < 1 or args.direct < 0 or args.batch < 1 or args.interval_ms < 1:
        ap.error("--streams and --batch must be >= 1, --direct >= 0, --interval-ms >= 1")
    if args.downstream == "h2c" and args.proxy != "streammask":
        ap.error("--downstream h2c needs --proxy streammask")
    if not 1 <= args.h2_streams <= 100:
        ap.error("--h2-streams must be 1..100 (the proxy's SETTINGS_MAX_CONCURRENT_STREAMS)")

    # ---- descriptors and ports
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.downstream == "h2c":  # an upstream socket per stream; downstream, the probes' and the h2c connections
        need_proxy = args.streams + args.probes + math.ceil(args.streams / args.h2_streams) + 64
        fit = (hard - 64) * args.h2_streams // (args.h2_streams + 1) - args.probes
        shape = "an upstream socket per stream, a downstream one per probe and h2c connection, plus ~30"
    else:
        need_proxy = 2 * args.streams + 64          # downstream + upstream socket per stream, ~30 at start
        fit = (hard - 64) // 2
        shape = "a downstream and an upstream socket per stream, plus ~30"
    need_other = args.streams + args.direct + 64  # this client; the mock
    need = max(need_proxy, need_other)
    if hard != resource.RLIM_INFINITY and hard < need:
        msg = (f"RLIMIT_NOFILE hard limit is {hard}, but {args.streams} streams need ~{need_proxy} descriptors "
               f"in the proxy ({shape}). At most ~{fit} streams fit. Raise the hard limit where this runs (root with CAP_SYS_RESOURCE: "
               f"`ulimit -Hn 65536`; docker: --ulimit nofile=65536:65536; systemd: LimitNOFILE=65536) "
               f"or use --streams {fit}.")
        if not args.force:
            print(f"bench_streams: error: {msg}", file=sys.stderr)
            sys.exit(3)
        print(f"bench_streams: WARNING (--force): {msg}", file=sys.stderr)
    target = hard if hard != resource.RLIM_INFINITY else max(need, soft, 65536)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        print(f"bench_streams: error: cannot raise RLIMIT_NOFILE to {target}: {e}", file=sys.stderr)
        sys.exit(3)
    try:
        lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    per_source = int((hi - lo + 1) * 0.8)
    if args.sources is None:
        args.sources = max(4, math.ceil((args.streams + args.direct) / per_source))
    if not 1 <= args.sources <= 254:
        ap.error("--sources must be 1..254")
    if args.streams > per_source:
        print(f"bench_streams: WARNING: the proxy's upstream connections all go 127.0.0.1 -> the mock's "
              f"port; more than ~{hi - lo + 1} at once exhaust the ephemeral port range ({lo}-{hi})",
              file=sys.stderr)

    bin_dir = os.environ.get("STREAMMASK_BIN_DIR", DEFAULT_BIN_DIR)
    proxy_name = "streammask" if args.proxy == "streammask" else "streammask-bench-pingora"
    proxy_bin, mock_bin = os.path.join(bin_dir, proxy_name), os.path.join(bin_dir, "streammask-mock")
    missing = [b for b in (proxy_bin, mock_bin) if not os.access(b, os.X_OK)]
    if missing:
        print("bench_streams: missing binaries:\n  " + "\n  ".join(missing) +
              "\n(build: CARGO_TARGET_DIR=/root/.cache/streammask-target cargo build --release --workspace "
              "--bins; or set STREAMMASK_BIN_DIR)", file=sys.stderr)
        sys.exit(3)
    if args.proxy == "streammask" and not os.environ.get("STREAMMASK_HS_CACHE_DIR"):
        print("bench_streams: note: STREAMMASK_HS_CACHE_DIR is not set; the proxy compiles its rule pack at "
              "start (slow)", file=sys.stderr)
    if args.nice:
        os.nice(args.nice)  # inherited by everything started below

    total = args.streams + args.direct
    ramp = (math.ceil(total / args.batch) - 1) * args.batch_interval
    budget = 120 + args.start_timeout + 2 * ramp + args.hold_secs + max(30.0, 0.5 * (args.hold_secs + ramp)) \
        + args.interval_ms / 100 + total / 200

    def on_signal(msg, code):
        def handler(*_):
            print(f"bench_streams: error: {msg}", file=sys.stderr, flush=True)
            raise SystemExit(code)  # asyncio lets SystemExit through; `finally` stops the children
        return handler

    signal.signal(signal.SIGTERM, on_signal("terminated", 143))
    signal.signal(signal.SIGALRM, on_signal("time limit reached (stuck?)", 124))
    signal.alarm(int(budget))

    tmp = tempfile.mkdtemp(prefix="streammask-streams-")
    # Copy the binaries: the shared target dir may be rebuilt by someone else mid-run.
    for b in (proxy_bin, mock_bin):
        shutil.copy2(b, tmp)
    info = machine_info()
    info.update({
        "git": git_rev(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "binaries": f"{bin_dir} ({proxy_name} mtime "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(os.path.getmtime(proxy_bin)))} UTC)",
        "command": shlex.join([sys.executable] + sys.argv),
        "rlimit_nofile": [target, hard], "port_range": [lo, hi], "loadavg_start": loadavg(),
    })
    results = {"machine": info, "args": vars(args)}
    print(f"# scale test: {args.streams} paced SSE streams through {args.proxy}  (tmp {tmp})", flush=True)
    print(f"# load average at start: {info['loadavg_start']}", flush=True)
    if float(info["loadavg_start"].split()[0]) > 0.5 * (os.cpu_count() or 1):
        print("# WARNING: the machine is busy; the figures will be noisy", flush=True)
    code, interrupted = 2, False
    try:
        asyncio.run(run(args, info, results, tmp,
                        (os.path.join(tmp, proxy_name), os.path.join(tmp, "streammask-mock"))))
        code = report(args, info, results)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1, default=str)
            print(f"results: {args.json}")
    except Abort as e:
        print(f"bench_streams: error: {e}", file=sys.stderr)
        code = e.code
    except SystemExit as e:  # SIGTERM or the time limit (see on_signal)
        code, interrupted = (e.code if isinstance(e.code, int) else 2), True
    finally:
        signal.alarm(0)
        stop_all()
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if interrupted:  # skip the interpreter's complaints about the event loop's abandoned tasks
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
