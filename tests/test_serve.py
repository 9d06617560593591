"""The prediction service: in-process through Starlette's TestClient (predictions, static
files, Host check, body cap, content sniffing, API key, bounded concurrency, error hygiene),
`imagefit serve` option checks, one real server on a socket, and one real browser."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image
from starlette.testclient import TestClient

from conftest import COLOURS, make_image
from imagefit.cli.main import main
from imagefit.estimator import ImageClassifier
from imagefit.serve.app import ServeSettings, create_app, is_loopback

BASE = "http://127.0.0.1:8000"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def clf(trained_run):
    return trained_run["result"].classifier


@pytest.fixture(scope="module")
def client(clf):
    return TestClient(create_app(clf, ServeSettings()), base_url=BASE)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One PNG per class (made here), plus the bytes of each."""
    root = tmp_path_factory.mktemp("serve-images")
    paths = {name: make_image(root / f"{name}.png", colour, seed=900 + i)
             for i, (name, colour) in enumerate(COLOURS.items())}
    return {name: (path, path.read_bytes()) for name, path in paths.items()}


def png_bytes(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def octet(data, **extra):
    return {"content": data, "headers": {"Content-Type": "application/octet-stream", **extra}}


# --- predictions -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(COLOURS))
def test_predict_matches_classifier(client, clf, images, name):
    path, data = images[name]
    r = client.post("/predict", **octet(data))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"label", "confidence", "probabilities"}
    assert list(body["probabilities"]) == list(clf.classes_)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["label"] == clf.predict([str(path)])[0]
    proba = clf.predict_proba([str(path)])[0]
    assert body["confidence"] == pytest.approx(float(proba.max()), abs=1e-4)
    np.testing.assert_allclose([body["probabilities"][c] for c in clf.classes_], proba, atol=1e-4)
    assert body["confidence"] == max(body["probabilities"].values())
    assert r.headers["x-content-type-options"] == "nosniff"


def test_predict_sniffs_content_not_header(client, clf, images):
    path, data = images["dog"]
    r = client.post("/predict", content=data, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == clf.predict([str(path)])[0]


# --- health, page and static files -------------------------------------------------------------

def test_health(client, clf):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["classes"] == list(clf.classes_)
    assert body["status"] == "ok" and body["auth"] is False
    assert body["image_size"] == clf.preprocessing_.image_size


def test_page_and_static_assets(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert '<script src="/static/app.js">' in r.text
    js = client.get("/static/app.js")
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]
    assert 'fetch("/predict"' in js.text
    assert client.get("/static/app.css").status_code == 200


@pytest.mark.parametrize("path", ["/static/../bundle.py", "/static/..%2Fbundle.py",
                                  "/static/%2e%2e", "/static/whatever", "/static/index.html",
                                  "/static/__init__.py", "/bundle.py"])
def test_static_refuses_other_paths(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert "import" not in r.text and "def " not in r.text


def test_predict_needs_post(client):
    assert client.get("/predict").status_code == 405


# --- Host header -------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000", "[::1]",
                                  "LOCALHOST", "127.0.0.1:8000"])
def test_loopback_hosts_allowed(client, host):
    r = client.get("/health", headers={"Host": host})
    assert r.status_code == 200, host


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example",
                                  "127.0.0.1.nip.io:8000", ""])
def test_other_hosts_refused(client, host):
    r = client.get("/health", headers={"Host": host})
    assert r.status_code == 403, host
    assert r.json() == {"error": "Host not allowed."}


def test_host_check_covers_predict(client, images):
    r = client.post("/predict", **octet(images["cat"][1], Host="evil.example"))
    assert r.status_code == 403


def _asgi_get(app, headers: list[tuple[bytes, bytes]]) -> int:
    """Status of GET /health with exactly these raw headers (no client adds a Host)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": "/health",
             "raw_path": b"/health", "root_path": "", "scheme": "http", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_missing_host_header_refused(clf):
    app = create_app(clf, ServeSettings())
    assert _asgi_get(app, []) == 403
    assert _asgi_get(app, [(b"host", b"127.0.0.1:8000")]) == 200


# --- body cap ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_app(clf):
    return create_app(clf, ServeSettings(max_body_bytes=1000))


def test_body_cap_with_content_length(small_app):
    client = TestClient(small_app, base_url=BASE)
    r = client.post("/predict", **octet(bytes(2000)))
    assert r.status_code == 413
    assert "1,000" in r.json()["error"]
    # The cap is on the body, not on valid images: a small image still passes.
    small = png_bytes((8, 8))
    assert len(small) < 1000
    assert client.post("/predict", **octet(small)).status_code == 200


def test_body_cap_with_chunked_body(small_app, images):
    client = TestClient(small_app, base_url=BASE)
    data = images["cat"][1] + bytes(1000)  # a real image header, then too many bytes
    assert len(data) > 2000

    def chunks():
        for i in range(0, len(data), 100):
            yield data[i:i + 100]

    r = client.post("/predict", content=chunks(),
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413
    assert "1,000" in r.json()["error"]


def test_body_cap_stops_reading_early(small_app):
    """Driven as ASGI directly, so every body chunk the app pulls is counted."""
    total, size = 100_000, 100
    pulled = 0
    sent = []

    async def receive():
        nonlocal pulled
        if pulled >= total:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += size
        return {"type": "http.request", "body": b"\x89PNG\r\n\x1a\n" + bytes(size - 8),
                "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/predict",
             "raw_path": b"/predict", "root_path": "", "scheme": "http", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1:8000"),
                         (b"content-type", b"application/octet-stream"),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(small_app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    assert status == 413
    assert pulled <= 1000 + size  # stopped at the first chunk past the cap


def test_bad_content_length_refused(small_app):
    """A Content-Length over the cap is refused before any body is read."""
    client = TestClient(small_app, base_url=BASE)
    r = client.post("/predict", content=bytes(10),
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Length": "999999999"})
    assert r.status_code == 413


# --- content sniffing --------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"<!doctype html><html><body><script>alert(1)</script></body></html>",
    b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40),
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    b"\xc5\xd0\xd3\xc6" + bytes(40),
    b"%PDF-1.7\n" + bytes(40),
    b"",
], ids=["html", "zip", "eps", "eps-binary", "pdf", "empty"])
def test_non_images_are_415(client, data):
    r = client.post("/predict", **octet(data))
    assert r.status_code == 415
    assert set(r.json()) == {"error"}


def test_form_upload_is_415(client, images):
    r = client.post("/predict", files={"file": ("cat.png", images["cat"][1], "image/png")})
    assert r.headers.get("content-type", "").startswith("application/json")
    assert r.status_code == 415


def test_text_content_type_is_415(client, images):
    r = client.post("/predict", content=images["cat"][1], headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


@pytest.fixture(scope="module")
def bomb_client(clf):
    return TestClient(create_app(clf, ServeSettings(max_pixels=10_000)), base_url=BASE)


def test_decompression_bomb_is_422_and_service_recovers(bomb_client, images, clf):
    r = bomb_client.post("/predict", **octet(png_bytes((200, 200))))
    assert r.status_code == 422
    assert "too_large" in r.json()["error"]
    path, data = images["owl"]
    r = bomb_client.post("/predict", **octet(data))
    assert r.status_code == 200
    assert r.json()["label"] == clf.predict([str(path)])[0]


def test_truncated_jpeg_is_422(client, tmp_path):
    jpeg = make_image(tmp_path / "x.jpg", COLOURS["cat"], seed=5, size=(120, 90), fmt="JPEG")
    data = jpeg.read_bytes()
    r = client.post("/predict", **octet(data[: len(data) // 2]))
    assert r.status_code == 422
    assert set(r.json()) == {"error"}


# --- decoding in worker processes (reliability reference C3) -----------------------------------

def crashing_decode(data, **kwargs):
    """A decoder that dies like a crashed C library when it sees b"crash"; runs in a worker."""
    if data.startswith(b"crash"):
        os.abort()
    if data.startswith(b"hang"):
        time.sleep(3600)
    from imagefit.data.images import load_image

    return load_image(data, **kwargs)


def test_a_decoder_that_crashes_or_hangs_costs_a_worker_not_the_service():
    from imagefit.errors import ImageLoadError
    from imagefit.serve.decoding import DecoderPool

    pool = DecoderPool(1, timeout_s=20, decode=crashing_decode)
    good = png_bytes((40, 30))
    assert pool.decode(good, size=32).shape == (32, 32, 3)
    with pytest.raises(ImageLoadError, match="crashed"):
        pool.decode(b"crash", size=32)
    assert pool.decode(good, size=32).shape == (32, 32, 3) and pool.replaced == 1
    pool.timeout_s = 2.0  # a hang guard: the sleeping worker is killed at the deadline
    with pytest.raises(ImageLoadError, match="took too long"):
        pool.decode(b"hang", size=32)
    assert pool.decode(good, size=32).shape == (32, 32, 3) and pool.replaced == 2
    pool.close()


def test_a_decode_past_the_memory_cap_is_too_large_and_the_worker_lives_on():
    from imagefit.errors import ImageLoadError
    from imagefit.serve.decoding import DecoderPool

    pool = DecoderPool(1, timeout_s=120, headroom_mb=64)
    bomb = png_bytes((9000, 9000))  # 81 MP, under the pixel cap; ~243 MB decoded
    with pytest.raises(ImageLoadError) as info:
        pool.decode(bomb, size=32)
    assert info.value.reason == "too_large"
    assert pool.decode(png_bytes((40, 30)), size=32).shape == (32, 32, 3)
    assert pool.replaced == 0
    pool.close()


@pytest.mark.slow
def test_load_with_hostile_uploads_gets_no_5xx_and_the_service_stays_up(clf, images, tmp_path):
    """300 requests from 8 threads, 10 % hostile (truncated JPEG, a bomb under the pixel cap,
    random bytes): every hostile one is refused (415/422), every other one answered 200."""
    from concurrent.futures import ThreadPoolExecutor

    app = create_app(clf, ServeSettings(max_concurrency=2, max_queue=64,
                                        decode_memory_mb=128))
    jpeg = make_image(tmp_path / "x.jpg", COLOURS["cat"], seed=5, size=(120, 90), fmt="JPEG")
    hostile = [jpeg.read_bytes()[:300], png_bytes((9000, 9000)),
               b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(4000)]
    good = [data for _, data in images.values()]
    bodies = [hostile[i // 10 % 3] if i % 10 == 0 else good[i % len(good)] for i in range(300)]
    with TestClient(app, base_url=BASE) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda b: client.post("/predict", **octet(b)).status_code,
                                  bodies))
        seconds = time.perf_counter() - started
        assert client.get("/health").status_code == 200
        assert client.post("/predict", **octet(good[0])).status_code == 200
    expected = [422 if i % 10 == 0 else 200 for i in range(300)]
    assert [c for c in codes if c >= 500] == []
    assert codes == expected, sorted(set(zip(codes, expected)))
    print(f"300 requests (30 hostile), 8 threads: {300 / seconds:.1f} req/s")


# --- micro-batching ----------------------------------------------------------------------------

def test_requests_arriving_together_share_a_batch_and_get_their_own_answers(clf, images,
                                                                          monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    sizes = []
    original = ImageClassifier.predict_proba_images

    def recording(self, batch):
        sizes.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(ImageClassifier, "predict_proba_images", recording)
    app = create_app(clf, ServeSettings(max_concurrency=4, max_queue=64, max_batch=6,
                                        max_wait_s=0.2))
    names = [list(images)[i % len(images)] for i in range(18)]
    sizes.clear()  # (create_app warms the model up)
    with TestClient(app, base_url=BASE) as client, ThreadPoolExecutor(12) as pool:
        bodies = list(pool.map(lambda n: client.post("/predict", **octet(images[n][1])).json(),
                               names))
    assert sum(sizes) == 18 and max(sizes) > 1 and max(sizes) <= 6, sizes
    expected = {n: clf.predict_proba([str(images[n][0])])[0] for n in images}
    for name, body in zip(names, bodies):
        np.testing.assert_allclose([body["probabilities"][c] for c in clf.classes_],
                                   expected[name], atol=1e-4)


def test_batcher_keeps_order_bounds_batches_and_survives_a_cancelled_request():
    from imagefit.serve.app import _Batcher

    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)

    async def scenario():
        batcher = _Batcher(predict, max_batch=4, max_wait_s=0.05)
        tasks = [asyncio.ensure_future(batcher.submit(np.full((2, 2), i, np.float32)))
                 for i in range(10)]
        tasks[3].cancel()  # its request timed out: the others still get their answers
        done = await asyncio.gather(*tasks, return_exceptions=True)
        one_by_one = _Batcher(predict, max_batch=1, max_wait_s=0.05)
        alone = await one_by_one.submit(np.ones((2, 2), np.float32))
        return done, alone

    done, alone = asyncio.run(scenario())
    assert isinstance(done[3], asyncio.CancelledError)
    assert [float(d[0]) for i, d in enumerate(done) if i != 3] == [4.0 * i for i in range(10)
                                                                   if i != 3]
    assert sizes[:-1] and max(sizes[:-1]) <= 4 and sum(sizes[:-1]) == 9 and sizes[-1] == 1
    assert float(alone[0]) == 4.0


# --- API key -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def key_client(clf):
    return TestClient(create_app(clf, ServeSettings(api_key="s3cret")), base_url=BASE)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"X-API-Key": "wrong"}, {"Authorization": "s3cret"},
                                     {"Authorization": "Bearer s3cret2"},
                                     {"Authorization": "Bearer "}])
def test_api_key_refused(key_client, images, headers):
    r = key_client.post("/predict", **octet(images["cat"][1], **headers))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "s3cret" not in r.text


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer s3cret"},
                                     {"X-API-Key": "s3cret"}])
def test_api_key_accepted(key_client, images, clf, headers):
    path, data = images["cat"]
    r = key_client.post("/predict", **octet(data, **headers))
    assert r.status_code == 200
    assert r.json()["label"] == clf.predict([str(path)])[0]


def test_health_without_key_says_auth(key_client, clf):
    r = key_client.get("/health")
    assert r.status_code == 200
    assert r.json()["auth"] is True and r.json()["classes"] == list(clf.classes_)


# --- bounded concurrency and errors ------------------------------------------------------------

def test_bounded_concurrency_429(clf, images, monkeypatch):
    """With one slot and no queue, requests that arrive while a prediction holds the slot get
    429. The held prediction waits on an event (not a sleep) until the others are answered, so
    the overlap does not depend on how fast the threads are scheduled."""
    original = ImageClassifier.proba_from_features
    entered, release = threading.Event(), threading.Event()

    def held(self, features):
        entered.set()
        assert release.wait(120), "the test never released the held prediction"
        return original(self, features)

    # The request deadline (30 s by default, 503 past it) is not under test here: it must not
    # end the held request on a slow machine.
    app = create_app(clf, ServeSettings(max_concurrency=1, max_queue=0, timeout_s=600))
    data = images["dog"][1]
    statuses, retry_after = [], []
    with TestClient(app, base_url=BASE) as client:

        def fire():
            r = client.post("/predict", **octet(data))
            statuses.append(r.status_code)
            if r.status_code == 429:
                retry_after.append(r.headers.get("retry-after"))

        with monkeypatch.context() as m:
            m.setattr(ImageClassifier, "proba_from_features", held)
            first = threading.Thread(target=fire)
            first.start()
            try:
                assert entered.wait(120), "the first request never reached the prediction"
                others = [threading.Thread(target=fire) for _ in range(3)]
                for t in others:
                    t.start()
                for t in others:
                    t.join(120)
                assert statuses == [429, 429, 429], statuses   # answered while the slot is held
            finally:
                release.set()
                first.join(120)
        assert sorted(statuses) == [200, 429, 429, 429], statuses
        assert retry_after and all(v and v.isdigit() and int(v) >= 1 for v in retry_after)
        assert client.post("/predict", **octet(data)).status_code == 200  # limiter released
        assert client.post("/predict", **octet(data)).status_code == 200


def test_internal_error_hides_details(clf, images, monkeypatch):
    app = create_app(clf, ServeSettings(max_concurrency=1, max_queue=0))
    client = TestClient(app, base_url=BASE, raise_server_exceptions=False)

    def boom(self, features):
        raise RuntimeError("boom /secret/path")

    with monkeypatch.context() as m:
        m.setattr(ImageClassifier, "proba_from_features", boom)
        r = client.post("/predict", **octet(images["owl"][1]))
    assert r.status_code == 500
    assert r.json() == {"error": "Internal error."}
    assert "Traceback" not in r.text and "/secret/path" not in r.text and "boom" not in r.text
    # The failed request released its slot (capacity is one).
    assert client.post("/predict", **octet(images["owl"][1])).status_code == 200


# --- CLI settings ------------------------------------------------------------------------------

def test_serve_cli_refuses_public_host_without_key(trained_run, monkeypatch, capsys):
    import uvicorn

    def no_server(*args, **kwargs):
        raise AssertionError("a server was started")

    monkeypatch.setattr(uvicorn, "run", no_server)
    code = main(["serve", str(trained_run["run"]), "--host", "0.0.0.0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--api-key" in err and "0.0.0.0" in err


def test_serve_cli_public_host_with_key(trained_run, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    assert main(["serve", str(trained_run["run"]), "--host", "0.0.0.0", "--port", "9123",
                 "--api-key", "k", "--quiet"]) == 0
    (app, kw), = calls
    assert kw["host"] == "0.0.0.0" and kw["port"] == 9123
    client = TestClient(app, base_url="http://192.168.1.10:9123")
    assert client.get("/health").json()["auth"] is True  # any Host; the key protects it
    assert client.post("/predict", **octet(b"x")).status_code == 401


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.5.5.5", "[::1]"])
def test_is_loopback_true(host):
    assert is_loopback(host) is True


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::",
                                  "localhost.example.com", "10.0.0.1"])
def test_is_loopback_false(host):
    assert is_loopback(host) is False


# --- a real server on a socket, and a real browser ---------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Hang guards only: each wait ends as soon as its condition holds, so a slow (loaded) machine
# makes the test slower, never red.
SERVER_START_S = 600
BROWSER_WAIT_S = 120


def _listening_ports(pid: int) -> set[int]:
    proc = psutil.Process(pid)
    return {c.laddr.port for p in [proc, *proc.children(recursive=True)]
            for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


def _start_server(run: Path, logs: Path):
    """`imagefit serve` on a free port: (process, port) once *that process* listens and answers
    /health. Another process can take the port between `_free_port` and the server's bind (a
    second test session on the machine); the server then exits with "address already in use"
    and another port is tried."""
    exe = Path(sys.executable).parent / "imagefit"
    for attempt in range(5):
        port = _free_port()
        err_path = logs / f"err-{attempt}.txt"
        with open(logs / f"out-{attempt}.txt", "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([str(exe), "serve", str(run), "--port", str(port)],
                                    stdout=out, stderr=err, env=os.environ.copy())
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                message = err_path.read_text(errors="replace")
                if "address already in use" in message.lower():
                    break                                            # try another port
                pytest.fail(f"the server exited with {proc.returncode}: {message[-2000:]}")
            try:
                # Our process holds the port, so /health is answered by it, not by another.
                if port in _listening_ports(proc.pid) and httpx.get(
                        f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200:
                    return proc, port
            except (httpx.TransportError, psutil.Error):
                pass
            if time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"the server did not answer /health within {SERVER_START_S} s")
            time.sleep(0.2)
    pytest.fail("five free ports were taken before the server could bind them")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


@pytest.fixture(scope="module")
def live_server(trained_run, tmp_path_factory):
    proc, port = _start_server(trained_run["run"], tmp_path_factory.mktemp("server"))
    try:
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "proc": proc}
    finally:
        _stop(proc)


def test_real_server_binds_loopback_only(live_server, images, clf):
    proc = psutil.Process(live_server["proc"].pid)
    listening = [c for p in [proc, *proc.children(recursive=True)]
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening
    assert {(c.laddr.ip, c.laddr.port) for c in listening} == {("127.0.0.1",
                                                                live_server["port"])}
    path, data = images["owl"]
    r = httpx.post(live_server["url"] + "/predict", content=data, timeout=120,
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200
    assert r.json()["label"] == clf.predict([str(path)])[0]
    assert "server" not in r.headers
    r = httpx.get(live_server["url"] + "/health", headers={"Host": "evil.example"}, timeout=120)
    assert r.status_code == 403


def _browser_available() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if not missing:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{', '.join(missing)} missing: .ci/run must install chromium "
                    f"chromium-driver (apt-get install chromium chromium-driver)")
    pytest.skip(f"{', '.join(missing)} not installed")


@contextlib.contextmanager
def served_page(run: Path, tmp_path: Path):
    """Headless Chromium on the page of `imagefit serve RUN` (started on a free port, stopped
    after): yields (driver, a WebDriverWait)."""
    _browser_available()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    (tmp_path / "server").mkdir()
    proc, port = _start_server(run, tmp_path / "server")
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--user-data-dir={tmp_path / 'profile'}"):
            options.add_argument(arg)
        driver = webdriver.Chrome(options=options,
                                  service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            yield driver, WebDriverWait(driver, BROWSER_WAIT_S)
        finally:
            driver.quit()
    finally:
        _stop(proc)


def test_browser_page_predicts(live_server, clf, tmp_path):
    _browser_available()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = make_image(tmp_path / "photo.png", COLOURS["dog"], seed=31337, size=(64, 48))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=900,700"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.get(live_server["url"] + "/")
        wait = WebDriverWait(driver, BROWSER_WAIT_S)
        n = len(clf.classes_)
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith(f"{n} classes"))
        driver.find_element(By.ID, "file").send_keys(str(image))
        status = driver.find_element(By.ID, "status")
        wait.until(lambda d: status.get_attribute("data-label")
                   or status.get_attribute("class") == "error")
        assert status.get_attribute("class") != "error", status.text
        label = status.get_attribute("data-label")
        assert label == clf.predict([str(image)])[0]
        assert status.text.startswith(label + " (")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#bars li")) == min(5, n)
        shot = tmp_path / "serve-page.png"
        assert driver.save_screenshot(str(shot))
        assert shot.is_file() and shot.stat().st_size > 5000
        with Image.open(shot) as im:
            assert im.format == "PNG" and im.size[0] >= 400
    finally:
        driver.quit()
