"""The inference server over real HTTP: a real `python -m components.serving` process on a loopback port.

Happy paths of the SageMaker contract, a battery of bad requests (each must be a 4xx JSON error and
leave the server healthy), slow and stalled clients, and a soak run watching 5xx and memory.
"""

from __future__ import annotations

import asyncio
import csv
import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from components.serving.handler import MAX_TEXT_CHARS, MAX_TEXTS
from tests.support.http_server import (
    HOST,
    ServerProcess,
    free_port,
    running_server,
    serving_cmd,
    start_server,
)
from tests.support.tiny import LABELS, SAMPLE

TIMEOUT = 2.0  # the test server's head and body deadlines, seconds
SPORT = "The striker scored twice in the cup final and the crowd sang until the whistle."


@pytest.fixture(scope="module")
def server(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory):
    """One server for the module, started cold so the loading phase can be observed."""
    log_file = tmp_path_factory.mktemp("serving-http") / "server.log"
    port = free_port()
    srv = start_server(serving_cmd(tiny_package, port, "--head-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT)),
                       log_file, port, wait_status=None)
    try:
        # While the model loads: the first answers to /ping and /invocations.
        deadline = time.monotonic() + 60
        while True:
            try:
                srv.loading_ping = httpx.get(f"{srv.url}/ping", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or not srv.alive():
                    raise
                time.sleep(0.02)
        srv.loading_invocation = httpx.post(f"{srv.url}/invocations", json={"inputs": SPORT}, timeout=5)
        srv.wait_until(200, timeout=90)
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: ServerProcess):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def assert_healthy(server: ServerProcess) -> None:
    assert server.alive(), server.log()[-3000:]
    r = httpx.get(f"{server.url}/ping", timeout=5)
    assert r.status_code == 200, r.text


def assert_json_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    return body


def assert_predictions(rows: list[dict], n: int) -> None:
    assert len(rows) == n
    for row in rows:
        assert row["label"] in LABELS
        assert set(row["scores"]) == set(LABELS)
        assert row["score"] == max(row["scores"].values())
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-4)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after its answer counts as closing)."""
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return reply


def raw_exchange(server: ServerProcess, data: bytes, wait: float = 10) -> tuple[bytes, float]:
    """Send raw bytes; read until the server closes the connection (or `wait` s). Returns (reply, seconds)."""
    start = time.monotonic()
    with socket.create_connection((HOST, server.port), timeout=wait) as s:
        s.sendall(data)
        reply = read_until_closed(s)
    return reply, time.monotonic() - start


def parse_raw(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


# -- loading ------------------------------------------------------------------------------------------


def test_ping_is_503_while_the_model_loads_and_200_after(server: ServerProcess):
    assert_json_error(server.loading_ping, 503)
    assert_json_error(server.loading_invocation, 503)
    assert server.pings[-1] == 200
    r = httpx.get(f"{server.url}/ping")
    assert r.status_code == 200 and r.json()["labels"] == LABELS


def test_ping_is_500_when_the_model_cannot_load(tmp_path: Path):
    empty = tmp_path / "not-a-package"
    empty.mkdir()
    with running_server(empty, tmp_path / "server.log", wait_status=500) as srv:
        body = assert_json_error(httpx.get(f"{srv.url}/ping"), 500)
        assert "config.json" in body["error"]
        assert_json_error(httpx.post(f"{srv.url}/invocations", json={"inputs": "x"}), 503)


# -- happy paths --------------------------------------------------------------------------------------


def test_json_single_text(client: httpx.Client):
    r = client.post("/invocations", json={"inputs": SPORT})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert_predictions(r.json()["predictions"], 1)


def test_json_list_bare_list_and_charset_agree(client: httpx.Client):
    texts = [SPORT, "Shares fell after the bank cut its profit forecast."]
    a = client.post("/invocations", json={"inputs": texts}).json()["predictions"]
    b = client.post("/invocations", json=texts).json()["predictions"]
    c = client.post("/invocations", content=json.dumps({"inputs": texts}),
                    headers={"content-type": "application/json; charset=utf-8"}).json()["predictions"]
    assert_predictions(a, 2)
    assert [p["label"] for p in a] == [p["label"] for p in b] == [p["label"] for p in c]
    assert a[0]["scores"] == pytest.approx(b[0]["scores"], abs=1e-5)


def test_csv_one_text_per_row(client: httpx.Client):
    body = f'{SPORT}\n"Parliament passed the budget, 300 votes to 250."\n\n'
    r = client.post("/invocations", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    assert_predictions(r.json()["predictions"], 2)


def test_jsonlines_in_and_out(client: httpx.Client):
    body = json.dumps({"inputs": SPORT}) + "\n" + json.dumps("a plain string line") + "\n\n"
    r = client.post("/invocations", content=body,
                    headers={"content-type": "application/jsonlines", "accept": "application/jsonlines"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/jsonlines"
    assert_predictions([json.loads(line) for line in r.text.splitlines()], 2)


def test_jsonlines_keeps_a_raw_line_separator_inside_a_string(client: httpx.Client):
    body = json.dumps({"inputs": "first part\u2028second part"}, ensure_ascii=False).encode()
    r = client.post("/invocations", content=body, headers={"content-type": "application/jsonlines"})
    assert r.status_code == 200, r.text
    assert_predictions(r.json()["predictions"], 1)


def test_accept_lists_and_wildcards(client: httpx.Client):
    for accept, expected in [("*/*", "application/json"), ("text/html, application/jsonlines;q=0.9",
                                                             "application/jsonlines"),
                             ("application/*", "application/json")]:
        r = client.post("/invocations", json={"inputs": SPORT}, headers={"accept": accept})
        assert r.status_code == 200 and r.headers["content-type"] == expected


def test_a_100k_character_text_is_answered_and_truncated(client: httpx.Client):
    words = SPORT.split()
    long = " ".join(words[i % len(words)] for i in range(40_000))[:MAX_TEXT_CHARS + 50_000]
    assert len(long) > MAX_TEXT_CHARS
    r = client.post("/invocations", json={"inputs": [long, long[:MAX_TEXT_CHARS], long[:2_000]]})
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    assert_predictions(rows, 3)
    # All three truncate to the same first max_length tokens: the model saw only the head of the text.
    assert rows[0]["scores"] == pytest.approx(rows[2]["scores"], abs=1e-5)
    assert rows[1]["scores"] == pytest.approx(rows[2]["scores"], abs=1e-5)


def test_head_on_ping(client: httpx.Client):
    assert client.head("/ping").status_code == 200


# -- bad requests -------------------------------------------------------------------------------------

JSON_H = {"content-type": "application/json"}
BAD = [
    # id, method, path, headers, body, status
    ("invalid-json", "POST", "/invocations", JSON_H, b'{"inputs": ["a", ', 400),
    ("not-json-at-all", "POST", "/invocations", JSON_H, b"hello", 400),
    ("empty-body", "POST", "/invocations", JSON_H, b"", 400),
    ("wrong-content-type", "POST", "/invocations", {"content-type": "text/plain"}, b"hello", 415),
    ("xml-content-type", "POST", "/invocations", {"content-type": "application/xml"}, b"<a/>", 415),
    ("missing-field", "POST", "/invocations", JSON_H, b'{"texts": ["a"]}', 400),
    ("inputs-null", "POST", "/invocations", JSON_H, b'{"inputs": null}', 400),
    ("empty-list", "POST", "/invocations", JSON_H, b'{"inputs": []}', 400),
    ("empty-bare-list", "POST", "/invocations", JSON_H, b"[]", 400),
    ("non-string-items", "POST", "/invocations", JSON_H, b'{"inputs": ["a", 1, null]}', 400),
    ("bool-item", "POST", "/invocations", JSON_H, b"[true]", 400),
    ("nan-item", "POST", "/invocations", JSON_H, b'{"inputs": NaN}', 400),
    ("nested-lists", "POST", "/invocations", JSON_H, b'{"inputs": [["a", ["b"]]]}', 400),
    ("nested-objects", "POST", "/invocations", JSON_H, b'{"inputs": {"inputs": {"inputs": "x"}}}', 400),
    ("object-items", "POST", "/invocations", JSON_H, b'{"inputs": [{"label": "x"}]}', 400),
    ("nested-100k-deep", "POST", "/invocations", JSON_H, b"[" * 100_000, 400),
    ("5000-digit-number", "POST", "/invocations", JSON_H, b"[" + b"7" * 5000 + b"]", 400),
    ("lone-surrogate", "POST", "/invocations", JSON_H, b'{"inputs": ["fine", "\\ud800 broken"]}', 400),
    ("invalid-utf8", "POST", "/invocations", JSON_H, b'{"inputs": "caf\xe9 \xff\xfe"}', 400),
    ("invalid-utf8-csv", "POST", "/invocations", {"content-type": "text/csv"}, b"caf\xe9\n", 400),
    ("csv-two-fields", "POST", "/invocations", {"content-type": "text/csv"}, b"Hello, world\n", 400),
    ("csv-huge-field", "POST", "/invocations", {"content-type": "text/csv"}, b"a" * 200_000, 400),
    ("csv-blank", "POST", "/invocations", {"content-type": "text/csv"}, b"\n \n,\n", 400),
    ("jsonl-bad-line", "POST", "/invocations", {"content-type": "application/jsonlines"}, b'"a"\n{oops\n', 400),
    ("jsonl-number-line", "POST", "/invocations", {"content-type": "application/jsonlines"}, b"42\n", 400),
    ("too-many-texts", "POST", "/invocations", JSON_H, json.dumps(["t"] * (MAX_TEXTS + 1)).encode(), 413),
    ("10MB-body", "POST", "/invocations", JSON_H, b'{"inputs": "' + b"x" * 10_000_000 + b'"}', 413),
    ("bad-accept", "POST", "/invocations", {**JSON_H, "accept": "text/html"}, b'{"inputs": "a"}', 406),
    ("bad-accept-csv", "POST", "/invocations", {**JSON_H, "accept": "text/csv"}, b'{"inputs": "a"}', 406),
    ("unknown-route", "GET", "/predict", {}, b"", 404),
    ("unknown-route-post", "POST", "/v1/models/x:predict", JSON_H, b'{"inputs": "a"}', 404),
    ("get-invocations", "GET", "/invocations", {}, b"", 405),
    ("post-ping", "POST", "/ping", JSON_H, b"{}", 405),
    ("delete-ping", "DELETE", "/ping", {}, b"", 405),
    ("put-invocations", "PUT", "/invocations", JSON_H, b'{"inputs": "a"}', 405),
]


@pytest.mark.parametrize("method,path,headers,body,status", [case[1:] for case in BAD], ids=[c[0] for c in BAD])
def test_bad_request_is_a_json_4xx_and_the_server_stays_up(client, server, method, path, headers, body, status):
    assert_json_error(client.request(method, path, headers=headers, content=body), status)
    # The same keep-alive connection still serves a good request, and /ping is healthy.
    r = client.post("/invocations", json={"inputs": SPORT})
    assert r.status_code == 200, r.text
    assert_healthy(server)


def test_a_10mb_body_without_content_length_is_cut_at_the_limit(client: httpx.Client):
    def chunks():
        for _ in range(100):
            yield b"x" * 100_000

    assert_json_error(client.post("/invocations", content=chunks(), headers=JSON_H), 413)


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    # h11 refuses a head over 16 KiB only when it arrives in pieces; these are far over any single read.
    b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(20_000)) + b"\r\n",
], ids=["garbage", "non-ascii-target", "negative-length", "300kB-header", "20000-headers"])
def test_malformed_http_is_a_json_400(server: ServerProcess, data: bytes):
    reply, _ = raw_exchange(server, data)
    status, headers, body = parse_raw(reply)
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == 400
    assert_healthy(server)


def test_an_unparseable_host_header_still_gets_json(server: ServerProcess):
    reply, _ = raw_exchange(server, b"GET /nope HTTP/1.1\r\nHost: [\r\nConnection: close\r\n\r\n")
    status, _, body = parse_raw(reply)
    assert status == 404 and json.loads(body)["status"] == 404
    assert_healthy(server)


# -- slow clients -------------------------------------------------------------------------------------

BODY_HEAD = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 200\r\n\r\n")


def test_a_stalled_body_is_cut_with_408_and_others_are_served_meanwhile(server: ServerProcess):
    with socket.create_connection((HOST, server.port), timeout=10) as stalled:
        stalled.sendall(BODY_HEAD + b'{"inputs": "half a bo')
        start = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=5) as other:
            for _ in range(3):
                assert other.get("/ping").status_code == 200
                assert other.post("/invocations", json={"inputs": SPORT}).status_code == 200
        assert time.monotonic() - start < TIMEOUT, "other clients waited on the stalled one"
        reply = read_until_closed(stalled)
        waited = time.monotonic() - start
    status, headers, body = parse_raw(reply)
    assert status == 408 and headers["connection"] == "close" and json.loads(body)["status"] == 408
    assert TIMEOUT * 0.5 < waited < TIMEOUT + 5
    assert_healthy(server)


def test_a_dribbled_body_is_cut_with_408(server: ServerProcess):
    """One byte every 50 ms keeps bytes flowing but never finishes: the deadline is on the whole body."""
    sock = socket.create_connection((HOST, server.port), timeout=10)
    stop = threading.Event()

    def dribble() -> None:
        try:
            sock.sendall(BODY_HEAD)
            while not stop.is_set():
                sock.sendall(b" ")
                time.sleep(0.05)
        except OSError:  # the server closed the connection
            pass

    start = time.monotonic()
    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        reply = read_until_closed(sock)
    finally:
        stop.set()
        t.join(5)
        sock.close()
    waited = time.monotonic() - start
    assert parse_raw(reply)[0] == 408
    assert waited < TIMEOUT + 5
    assert_healthy(server)


def test_stalled_headers_are_cut_with_408(server: ServerProcess):
    reply, waited = raw_exchange(server, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Ty", wait=TIMEOUT + 10)
    status, _, body = parse_raw(reply)
    assert status == 408 and json.loads(body)["status"] == 408
    assert TIMEOUT * 0.5 < waited < TIMEOUT + 5
    assert_healthy(server)


def test_an_idle_connection_is_closed_quietly(server: ServerProcess):
    reply, waited = raw_exchange(server, b"", wait=TIMEOUT + 10)
    assert reply == b"" and waited < TIMEOUT + 5


def test_fifty_stalled_clients_do_not_block_the_rest(server: ServerProcess):
    socks = []
    try:
        for i in range(50):
            s = socket.create_connection((HOST, server.port), timeout=10)
            s.sendall(BODY_HEAD if i % 2 else b"POST /invocations HTTP/1.1\r\n")
            socks.append(s)
        start = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=5) as other:
            rows = other.post("/invocations", json={"inputs": [SPORT] * 4}).json()["predictions"]
        assert_predictions(rows, 4)
        assert time.monotonic() - start < TIMEOUT
    finally:
        for s in socks:
            s.close()
    assert_healthy(server)


def test_a_client_that_hangs_up_mid_body_leaves_no_trace(server: ServerProcess):
    for _ in range(3):
        with socket.create_connection((HOST, server.port), timeout=10) as s:
            s.sendall(BODY_HEAD + b'{"inputs": ')
            time.sleep(0.1)
    assert_healthy(server)


def test_an_answered_body_that_keeps_coming_is_cut(server: ServerProcess):
    """A 413 from Content-Length alone answers at once; a client still sending after it is closed later."""
    with socket.create_connection((HOST, server.port), timeout=10) as s:
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 50000000\r\n\r\n" + b"x" * 1000)
        start = time.monotonic()
        reply = s.recv(65536)
        assert parse_raw(reply)[0] == 413
        s.settimeout(0.05)
        closed = False
        while not closed and time.monotonic() - start < TIMEOUT + 5:
            try:
                s.sendall(b"x" * 100)
                closed = s.recv(1) == b""
            except TimeoutError:
                pass
            except OSError:  # reset: the server closed while we were still sending
                closed = True
    assert closed, "the server kept a connection open for a body it had already refused"
    assert_healthy(server)


# -- micro-batcher ------------------------------------------------------------------------------------


def test_one_failing_request_does_not_fail_its_batch_mates():
    """In process: the batcher the server uses, with a model that raises on one request's text."""
    from components.serving.batcher import MicroBatcher, PredictionFailed

    calls: list[list[str]] = []

    def predict(texts):
        calls.append(list(texts))
        if "boom" in texts:
            raise ValueError("the model cannot take this text")
        return [t.upper() for t in texts]

    async def main():
        batcher = MicroBatcher(predict, max_batch=32, max_wait_ms=100)
        batcher.start()
        try:
            return await asyncio.gather(batcher.submit(["a"]), batcher.submit(["boom", "c"]),
                                        batcher.submit(["d", "e"]), return_exceptions=True)
        finally:
            await batcher.stop()

    first, failed, third = asyncio.run(main())
    assert calls[0] == ["a", "boom", "c", "d", "e"]  # they did share one batch
    assert first == ["A"] and third == ["D", "E"]
    assert isinstance(failed, PredictionFailed)


# -- soak ---------------------------------------------------------------------------------------------


def _soak_requests(n: int, seed: int) -> list[tuple[dict, bytes, int | None]]:
    """`n` requests, about 1 in 10 of them bad; (headers, body, expected status or None for 200)."""
    with open(SAMPLE, newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.random()
        batch = rng.sample(texts, rng.randint(1, 4))
        if k < 0.55:
            out.append((JSON_H, json.dumps({"inputs": batch}).encode(), None))
        elif k < 0.7:
            out.append((JSON_H, json.dumps(batch[0]).encode(), None))
        elif k < 0.8:
            body = "\n".join(json.dumps(t) for t in batch).encode()
            out.append(({"content-type": "application/jsonlines", "accept": "application/jsonlines"}, body, None))
        elif k < 0.9:
            body = "\n".join('"' + t.replace('"', '""') + '"' for t in batch).encode()
            out.append(({"content-type": "text/csv"}, body, None))
        elif k < 0.95:
            out.append((JSON_H, b'{"inputs": [' + json.dumps(batch[0]).encode(), 400))
        else:
            out.append(({"content-type": "text/plain"}, batch[0].encode(), 415))
    return out


def _fire(url: str, requests: list[tuple[dict, bytes, int | None]], clients: int) -> dict[int, int]:
    chunks = [requests[i::clients] for i in range(clients)]

    def worker(chunk) -> dict[int, int]:
        counts: dict[int, int] = {}
        with httpx.Client(base_url=url, timeout=30) as c:
            for headers, body, expected in chunk:
                r = c.post("/invocations", content=body, headers=headers)
                if r.status_code >= 500:
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1
                    continue
                assert r.status_code == (expected or 200), r.text[:300]
                counts[r.status_code] = counts.get(r.status_code, 0) + 1
        return counts

    total: dict[int, int] = {}
    with ThreadPoolExecutor(clients) as pool:
        for counts in pool.map(worker, chunks):
            for code, n in counts.items():
                total[code] = total.get(code, 0) + n
    return total


# Slow: ~35 s of steady load on 2 cores; run by .ci/run (RUN_SLOW=1). The shorter concurrency tests above run always.
@pytest.mark.slow
def test_soak_5000_requests_from_8_clients(server: ServerProcess, capsys):
    proc = psutil.Process(server.pid)
    _fire(server.url, _soak_requests(400, seed=1), clients=8)  # warm-up: allocator pools, tokenizer caches
    rss_before = proc.memory_info().rss
    start = time.monotonic()
    counts = _fire(server.url, _soak_requests(5000, seed=2), clients=8)
    seconds = time.monotonic() - start
    rss_after = proc.memory_info().rss
    with capsys.disabled():
        print(f"\nsoak: {sum(counts.values())} requests in {seconds:.1f} s ({sum(counts.values()) / seconds:.0f}/s), "
              f"status counts {dict(sorted(counts.items()))}, RSS {rss_before / 2**20:.1f} -> "
              f"{rss_after / 2**20:.1f} MiB ({(rss_after / rss_before - 1) * 100:+.1f}%)")
    assert sum(counts.values()) == 5000
    assert not [code for code in counts if code >= 500], counts
    assert rss_after < rss_before * 1.10
    assert_healthy(server)


def test_the_server_log_holds_no_traceback(server: ServerProcess):
    """Runs last in this module: nothing above, bad or slow, may have raised inside the server."""
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-5000:]
