"""Hostile clients against the real `serving-proxy serve` on loopback (proxy/server.py,
proxy/middleware.py, proxy/budget.py): bounded heads, head and body deadlines, the body
read before an admission place, the memory budget, the connection limit.

Every client here is a raw socket, so the test controls each byte and each pause; the
proxy is a child process started by the CLI, as a user starts it, and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import string
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from proxy import errors
from tests.integration.proxy_process import ProxyProcess
from tests.servers import LiveServer
from tests.strategies import JSON_BODIES, SPLIT_FRAME_BODIES

pytestmark = pytest.mark.integration

HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
MEMORY_WAIT_S = 0.5
MAX_IN_FLIGHT = 8
HEADER_BYTES = 65536  # the default
SCORE = "/model/iris/1/invocations"
SCORE_HEAD = (
    f"POST {SCORE} HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
    "Content-Length: {length}\r\n\r\n"
)
SCORE_BODY = b'{"inputs": [[1, 2]]}'  # the toy model answers [3.0]


@pytest.fixture(scope="module")
def proxy(
    serverless: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    config = {
        "backends": {"serverless": {"url": serverless.url, "path": "/invocations"}},
        "models": {"iris": {}},
        "limits": {
            "head_timeout_s": HEAD_TIMEOUT_S,
            "body_timeout_s": BODY_TIMEOUT_S,
            "max_in_flight": MAX_IN_FLIGHT,
            "memory_budget_mb": 1,
            "memory_wait_s": MEMORY_WAIT_S,
        },
    }
    with ProxyProcess(config, tmp_path_factory.mktemp("limits")) as process:
        yield process


# --- raw sockets ------------------------------------------------------------------------


def connect(proxy: ProxyProcess, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the proxy sends until it closes (a reset ends the reading too)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def read_reply(sock: socket.socket) -> bytes:
    """One reply with a Content-Length: its head and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a reply: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-reply"
        body += chunk
    return head + b"\r\n\r\n" + body


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def json_of(reply: bytes) -> Any:
    return json.loads(reply.partition(b"\r\n\r\n")[2])


def still_open(sock: socket.socket) -> bool:
    """Nothing came and the proxy has not closed: the socket has nothing to read yet."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lines_about(proxy: ProxyProcess, sock_port: int, since: int = 0) -> list[str]:
    """The proxy's log lines about the client at this port (none of them an access line,
    which names no port), written after the log's first `since` characters: the proxy
    lives for the module, and the kernel hands a closed client's port out again."""
    mine = re.compile(rf"127\.0\.0\.1:{sock_port}\b")
    return [line for line in proxy.log()[since:].splitlines() if mine.search(line)]


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- the body is read before an admission place -----------------------------------------


@pytest.mark.parametrize("slow_path", [SCORE, "/serving-endpoints/iris/invocations"])
def test_eight_slow_uploads_leave_room_for_a_complete_request(
    proxy: ProxyProcess, slow_path: str
) -> None:
    # Legacy and migrated requests alike: neither takes a place before its body is read.
    head = SCORE_HEAD.replace(SCORE, slow_path).format(length=1000).encode()
    slow = [connect(proxy) for _ in range(MAX_IN_FLIGHT)]
    try:
        for sock in slow:
            sock.sendall(head + b"[")
        time.sleep(0.2)  # every slow head parsed, every handler waiting for its body
        started = time.perf_counter()
        answer = httpx.post(
            proxy.url + SCORE,
            content=SCORE_BODY,
            headers={"content-type": "application/json"},
            timeout=5,
        )
        elapsed = time.perf_counter() - started
        assert (answer.status_code, answer.content) == (200, b"[3.0]")
        assert elapsed < 1.0
        assert all(still_open(sock) for sock in slow)
        # A byte now and then does not buy more time: the body has one deadline.
        for sock in slow:
            sock.sendall(b" ")
        replies = [read_to_end(sock) for sock in slow]
        late = time.perf_counter() - started
    finally:
        for sock in slow:
            sock.close()
    assert {status_of(reply) for reply in replies} == {408}
    assert late < BODY_TIMEOUT_S + 1.5
    print(f"complete request beside {MAX_IN_FLIGHT} slow uploads: {elapsed * 1e3:.1f} ms")


# --- heads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [b"", b"GET /healthz HTTP/1.1\r\nHost: pro", b"GET /heal"],
    ids=["nothing", "half-a-head", "half-a-request-line"],
)
def test_a_head_that_does_not_arrive_closes_the_connection(
    proxy: ProxyProcess, first: bytes
) -> None:
    since = len(proxy.log())
    with connect(proxy) as sock:
        started = time.perf_counter()
        sock.sendall(first)
        assert read_to_end(sock) == b""
        elapsed = time.perf_counter() - started
        port = sock.getsockname()[1]
    assert HEAD_TIMEOUT_S - 0.1 <= elapsed <= HEAD_TIMEOUT_S + 1.0
    wait_for(lambda: len(lines_about(proxy, port, since)) == 1, 2.0)
    print(f"half a head ({len(first)} bytes) closed after {elapsed:.3f} s")


def test_a_keep_alive_connection_idle_mid_head_is_closed(proxy: ProxyProcess) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
        assert status_of(read_reply(sock)) == 200
        time.sleep(HEAD_TIMEOUT_S * 0.8)  # idle between requests is keep-alive's business
        started = time.perf_counter()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert read_to_end(sock) == b""
        elapsed = time.perf_counter() - started
    assert HEAD_TIMEOUT_S - 0.1 <= elapsed <= HEAD_TIMEOUT_S + 1.0


def healthz_latencies(proxy: ProxyProcess, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            started = time.perf_counter()
            assert client.get(proxy.url + "/healthz").status_code == 200
            out.append(time.perf_counter() - started)
            time.sleep(0.002)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def big_header_request(size: int, secret: bytes = b"") -> bytes:
    return (
        b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer "
        + secret
        + b"\r\nX-Big: "
        + b"a" * size
        + b"\r\n\r\n"
    )


def test_a_1mib_header_gets_431_at_once_and_healthz_is_unaffected(proxy: ProxyProcess) -> None:
    baseline: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=healthz_latencies, args=(proxy, stop, baseline))
    prober.start()
    time.sleep(0.5)
    stop.set()
    prober.join(5)

    during: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=healthz_latencies, args=(proxy, stop, during))
    prober.start()
    since = len(proxy.log())
    timings, ports = [], []
    try:
        for _ in range(10):
            with connect(proxy) as sock:
                started = time.perf_counter()
                sock.sendall(big_header_request(1 << 20, b"secret-token-1234"))
                reply = read_reply(sock)
                timings.append(time.perf_counter() - started)
                ports.append(sock.getsockname()[1])
                assert read_to_end(sock) == b""  # then the proxy closes
            assert status_of(reply) == 431
            assert json_of(reply) == {
                "error_code": "BAD_REQUEST",
                "message": f"Request header fields exceed the {HEADER_BYTES} byte limit.",
            }
    finally:
        time.sleep(0.2)
        stop.set()
        prober.join(5)
    assert max(timings) < 0.1
    assert p99(during) < p99(baseline) + 0.05
    assert httpx.get(proxy.url + "/healthz").status_code == 200
    # One line per refused client, with its address and the reason, never the header.
    # A port may come round twice among the ten: one line per connection made from it.
    wait_for(
        lambda: all(
            len(lines_about(proxy, port, since)) == ports.count(port) for port in set(ports)
        ),
        2.0,
    )
    assert "secret-token-1234" not in proxy.log()
    print(
        f"1 MiB header: 431 in {max(timings) * 1e3:.1f} ms (worst of 10); /healthz p99 "
        f"{p99(baseline) * 1e3:.1f} ms before, {p99(during) * 1e3:.1f} ms meanwhile"
    )


def test_a_request_line_over_the_limit_gets_414(proxy: ProxyProcess) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"GET /" + b"u" * 200_000 + b" HTTP/1.1\r\nHost: proxy\r\n\r\n")
        reply = read_reply(sock)
    assert status_of(reply) == 414
    assert json_of(reply)["message"] == f"Request line exceeds the {HEADER_BYTES} byte limit."


def test_a_head_just_under_the_limit_is_served(proxy: ProxyProcess) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nX-Pad: "
    pad = HEADER_BYTES - len(head) - 4
    with connect(proxy) as sock:
        # Sent in pieces, as a slow network delivers it: each piece is counted once.
        data = head + b"p" * pad + b"\r\n\r\n"
        for i in range(0, len(data), 4096):
            sock.sendall(data[i : i + 4096])
        assert status_of(read_reply(sock)) == 200


def test_a_64mib_header_costs_little_cpu(proxy: ProxyProcess) -> None:
    assert proxy.process is not None
    data = big_header_request(64 << 20)
    before = cpu_seconds(proxy.process.pid)
    with connect(proxy) as sock:
        sender = threading.Thread(target=_send_ignoring_reset, args=(sock, data))
        sender.start()
        reply = read_reply(sock)
        sender.join(10)
    spent = cpu_seconds(proxy.process.pid) - before
    assert status_of(reply) == 431
    assert spent < 0.5
    assert httpx.get(proxy.url + "/healthz").status_code == 200
    print(f"64 MiB header: 431, {spent:.3f} s of the proxy's CPU")


def _send_ignoring_reset(sock: socket.socket, data: bytes) -> None:
    # The proxy closes after its answer: the rest was never going to be read.
    with contextlib.suppress(OSError):
        sock.sendall(data)


def test_pipelined_requests_before_an_oversized_head_get_their_answers(
    proxy: ProxyProcess,
) -> None:
    small = b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n"
    with connect(proxy) as sock:
        sock.sendall(small * 3 + big_header_request(200_000))
        replies = read_to_end(sock)
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", replies)]
    assert statuses == [200, 200, 200, 431]


# --- bodies -----------------------------------------------------------------------------


def test_a_body_that_does_not_arrive_gets_408_in_1x_shape_then_close(
    proxy: ProxyProcess,
) -> None:
    with connect(proxy) as sock:
        started = time.perf_counter()
        sock.sendall(SCORE_HEAD.format(length=100).encode() + b'{"inputs"')
        reply = read_to_end(sock)  # the reply, then the close
        elapsed = time.perf_counter() - started
    assert status_of(reply) == 408
    assert b"connection: close" in reply.lower()
    assert json_of(reply) == {
        "error_code": "BAD_REQUEST",
        "message": f"Request body not received within {BODY_TIMEOUT_S:g} s.",
    }
    assert BODY_TIMEOUT_S - 0.1 <= elapsed <= BODY_TIMEOUT_S + 1.0


def test_an_endpoint_that_ignores_its_body_still_gets_the_connection_closed(
    proxy: ProxyProcess,
) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nContent-Length: 50\r\n\r\nab")
        assert status_of(read_reply(sock)) == 200
        started = time.perf_counter()
        assert read_to_end(sock) == b""
        assert time.perf_counter() - started <= BODY_TIMEOUT_S + 1.0


# --- the memory budget ------------------------------------------------------------------


def test_a_body_without_room_in_the_budget_gets_503_after_memory_wait(
    proxy: ProxyProcess,
) -> None:
    # The budget is 1 MiB: a slow upload holds 900 kB of it by its Content-Length.
    with connect(proxy) as holder:
        holder.sendall(SCORE_HEAD.format(length=900_000).encode() + b"[")
        time.sleep(0.2)
        with connect(proxy) as sock:
            started = time.perf_counter()
            body = b" " * 199_980 + SCORE_BODY
            sock.sendall(SCORE_HEAD.format(length=len(body)).encode() + body)
            reply = read_reply(sock)
            waited = time.perf_counter() - started
        assert status_of(reply) == 503
        assert json_of(reply)["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert MEMORY_WAIT_S - 0.05 <= waited <= MEMORY_WAIT_S + 0.5

        # A chunked body is admitted as it arrives: the same wait, the same answer.
        with connect(proxy) as sock:
            head = f"POST {SCORE} HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
            sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
            chunk = b" " * 100_000
            for _ in range(3):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
            assert status_of(read_reply(sock)) == 503
    # The holder gone, its room is given back.
    time.sleep(0.1)
    answer = httpx.post(
        proxy.url + SCORE,
        content=b" " * 199_980 + SCORE_BODY,
        headers={"content-type": "application/json"},
    )
    assert (answer.status_code, answer.content) == (200, b"[3.0]")


def test_a_body_larger_than_the_whole_budget_gets_503_at_once(proxy: ProxyProcess) -> None:
    with connect(proxy) as sock:
        started = time.perf_counter()
        sock.sendall(SCORE_HEAD.format(length=2_000_000).encode())
        reply = read_reply(sock)
        elapsed = time.perf_counter() - started
    assert status_of(reply) == 503
    assert elapsed < MEMORY_WAIT_S


# --- connections ------------------------------------------------------------------------


def test_connections_over_the_limit_get_503_at_once(tmp_path: Path) -> None:
    config = {
        "backends": {"serverless": {"url": "http://127.0.0.1:9", "path": "/invocations"}},
        "models": {"iris": {}},
        "limits": {"max_connections": 4},
    }
    with ProxyProcess(config, tmp_path) as process:
        held = [connect(process) for _ in range(4)]
        try:
            time.sleep(0.2)
            with connect(process) as extra:
                started = time.perf_counter()
                reply = read_to_end(extra)
                elapsed = time.perf_counter() - started
            assert status_of(reply) == 503
            assert json_of(reply) == {
                "error_code": "TEMPORARILY_UNAVAILABLE",
                "message": "Too many open connections.",
            }
            assert elapsed < 0.5
            assert all(still_open(sock) for sock in held)
            held.pop().close()
            time.sleep(0.2)
            assert httpx.get(process.url + "/healthz").status_code == 200
        finally:
            for sock in held:
                sock.close()


# --- random heads and bodies --------------------------------------------------------------

METHODS = st.sampled_from(["GET", "POST", "POST", "PUT", "HEAD", "OPTIONS", "DELETE"]) | st.text(
    alphabet=string.ascii_uppercase, min_size=1, max_size=8
)
SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-_.%~", min_size=1, max_size=12)
PATHS = st.one_of(
    st.sampled_from(
        [
            SCORE,
            "/model/iris/Production/invocations",
            "/model/nope/1/invocations",
            "/invocations",
            "/serving-endpoints/iris/invocations",
            "/model-endpoint/iris/1/invocations",
            "/ping",
            "/version",
            "/model/iris/1/health",
            "/healthz",
            "/readyz",
            "/metrics",
            "/admin/models",
            "*",
        ]
    ),
    st.lists(SEGMENT, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts)),
)
QUERIES = st.none() | st.text(alphabet=string.ascii_letters + string.digits + "=&%+-", max_size=20)
# Framing headers are the generator's own, so that every request is whole.
FRAMING = {"content-length", "transfer-encoding", "connection", "upgrade", "host"}
HEADER_NAMES = st.sampled_from(
    [
        "content-type",
        "x-request-id",
        "x-client-id",
        "authorization",
        "accept",
        "accept-encoding",
        "x-forwarded-for",
        "forwarded",
        "expect",
        "cookie",
        "user-agent",
    ]
) | st.text(alphabet=string.ascii_letters + string.digits + "-_!#$%&'*+.^`|~", min_size=1).filter(
    lambda name: name.lower() not in FRAMING
)
HEADER_VALUES = st.sampled_from(
    [
        "application/json",
        "application/json; format=pandas-split",
        "application/json; format=pandas-records",
        "application/json-numpy-split",
        "text/csv",
        "application/json; charset=latin-1",
        "100-continue",
        "gzip",
        "Bearer x",
        "",
    ]
) | st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=40,
)
BODIES = st.one_of(
    st.binary(max_size=300),
    JSON_BODIES,
    SPLIT_FRAME_BODIES,
    st.lists(st.text(alphabet="abc,1.5\n", max_size=20), max_size=5).map(
        lambda rows: "\n".join(rows).encode()
    ),
)
BAD_LENGTHS = st.sampled_from(["-1", "abc", "1 2", "0x10", "", "+5", "99999999999999999999"])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A whole request (or one the parser refuses at once), closing after its reply."""
    method = draw(METHODS)
    target = draw(PATHS)
    query = draw(QUERIES)
    if query is not None:
        target += "?" + query
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
    lines = [f"{method} {target} {version}", "Host: proxy", "Connection: close"]
    lines += [
        f"{name}: {value}"
        for name, value in draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8))
    ]
    body = draw(BODIES)
    framing = draw(st.sampled_from(["length", "length", "chunked", "none", "short", "bad"]))
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
    elif framing == "short":  # the rest is read as the next request, after a close
        lines.append(f"Content-Length: {len(body) // 2}")
    elif framing == "bad":
        lines.append(f"Content-Length: {draw(BAD_LENGTHS)}")
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        size = draw(st.integers(min_value=1, max_value=64))
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        body = b""
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def check_no_500(proxy: ProxyProcess, reply: bytes) -> None:
    """A 500 only as 1.30.1 gave one (§6.1 E11: no Content-Type, or a body not UTF-8), or
    as an upstream gave it to a migrated client (§1.5: passed through as it came)."""
    for found in re.finditer(rb"HTTP/1\.[01] (\d{3}) ", reply):
        if found.group(1) != b"500" or errors.E11_PAGE.encode() in reply:
            continue
        request_id = re.search(rb"x-request-id: (\w+)", reply, re.I)
        assert request_id is not None, reply[:500]  # uvicorn's own 500: the app crashed
        mark = f'"request_id":"{request_id.group(1).decode()}"'
        wait_for(lambda mark=mark: mark in proxy.log(), 2.0)
        line = next(line for line in proxy.log().splitlines() if mark in line)
        record = json.loads(line)
        assert (record["flag"], record["backend"]) == ("-", "serverless"), line


FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def alive(proxy: ProxyProcess) -> Iterator[ProxyProcess]:
    yield proxy
    assert proxy.process is not None
    assert proxy.process.poll() is None
    assert httpx.get(proxy.url + "/healthz", timeout=5).status_code == 200
    log = proxy.log()
    assert "Traceback" not in log
    assert '"flag":"BUG"' not in log


@pytest.mark.timeout(300)
@seed(20261204)
@settings(FUZZ, max_examples=7000)
@given(request=requests())
def test_random_requests_never_earn_a_500(alive: ProxyProcess, request: bytes) -> None:
    with connect(alive) as sock:
        sock.sendall(request)
        reply = read_to_end(sock)
    assert reply.startswith(b"HTTP/1.")  # every whole request is answered
    check_no_500(alive, reply)


RAW = st.one_of(
    st.binary(min_size=1, max_size=400),
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(
            [
                b"GET / HTTP/1.1\r\n",
                b"POST /model/iris/1/invocations HTTP/1.1\r\nHost: proxy\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n",
                b"POST /serving-endpoints/iris/invocations HTTP/1.1\r\nContent-Length: ",
                b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            ]
        ),
        st.binary(max_size=400),
    ),
)


@pytest.mark.timeout(300)
@seed(20261205)
@settings(FUZZ, max_examples=3000)
@given(data=RAW)
def test_random_bytes_never_crash_the_proxy(alive: ProxyProcess, data: bytes) -> None:
    with connect(alive) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # no more: the proxy answers what it has, or closes
        reply = read_to_end(sock)
    check_no_500(alive, reply)
