"""The local prediction service: an ASGI app (Starlette) around a fitted classifier.

Safe by default: no endpoint takes a path, URL or model; request bodies are capped while they
are read; content is sniffed, never trusted; images go through the same decoder and pixel cap as
training; concurrency is bounded (429 with Retry-After); the `Host` header is checked (DNS
rebinding); an API key can be required; errors never carry stack traces or file paths.
Requests that arrive together share one pass of the model (`_Batcher`, dynamic micro-batching).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from importlib import resources

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagefit.data.images import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, sniff_format
from imagefit.errors import ImageLoadError
from imagefit.estimator import ImageClassifier
from imagefit.serve.decoding import DEFAULT_HEADROOM_MB, DecoderPool

log = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Reasons that mean "this is not an image we accept" (415) vs "an image we cannot use" (422).
_UNSUPPORTED = {"format_not_allowed", "unidentified", "empty"}
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                     "X-Frame-Options": "DENY"}
_PAGE_CSP = ("default-src 'self'; img-src 'self' blob:; script-src 'self'; style-src 'self'; "
             "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the service (the CLI's options)."""

    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_body_bytes: int = 10 * 2**20
    max_concurrency: int = 2        # uploads decoded at once (each in a worker process)
    max_queue: int = 16             # requests allowed to wait; beyond that: 429
    timeout_s: float = 30.0         # per request (upload, queue, prediction): beyond that 503
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_memory_mb: int = DEFAULT_HEADROOM_MB  # per decoding process, beyond its start-up
    max_batch: int = 16             # images the model runs at once (1: one request at a time)
    max_wait_s: float = 0.0         # how long a decoded image may wait for others to join it


class _Limiter:
    """Admits up to `max_concurrency + max_queue` requests; the rest are refused at once."""

    def __init__(self, max_concurrency: int, max_queue: int):
        self.capacity = max_concurrency + max_queue
        self.admitted = 0
        self.semaphore = asyncio.Semaphore(max_concurrency)

    def try_admit(self) -> bool:
        if self.admitted >= self.capacity:
            return False
        self.admitted += 1
        return True

    def release(self) -> None:
        self.admitted -= 1


class _Batcher:
    """Dynamic micro-batching: decoded images go through the model together (at most
    `max_batch` at once), one batch at a time in a thread. An image that finds the model idle
    goes at once (or after `max_wait_s`, if set, for others to join); those arriving while the
    model is busy gather for its next pass, so batches grow with the load and add no latency
    without it. Made inside the running event loop (its futures and lock belong to it)."""

    def __init__(self, predict, max_batch: int, max_wait_s: float):
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.loop = asyncio.get_running_loop()
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.lock = asyncio.Lock()
        self.timer: asyncio.TimerHandle | None = None
        self.scheduled = False  # a batch task is waiting for the model and will take `pending`

    async def submit(self, image: np.ndarray) -> np.ndarray:
        """The model's output for one image (cancelled with its request: a timed-out request
        leaves the batch it was waiting for)."""
        future = self.loop.create_future()
        self.pending.append((image, future))
        if len(self.pending) >= self.max_batch or self.max_wait_s == 0:
            self._schedule()
        elif self.timer is None and not self.scheduled:
            self.timer = self.loop.call_later(self.max_wait_s, self._schedule)
        return await future

    def _schedule(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.scheduled:
            self.scheduled = True
            self.loop.create_task(self._run_batch())

    async def _run_batch(self) -> None:
        async with self.lock:  # one batch through the model at a time
            self.scheduled = False
            batch = [(im, f) for im, f in self.pending[:self.max_batch] if not f.done()]
            del self.pending[:self.max_batch]
            if self.pending:
                self._schedule()  # the rest: a full batch waits for this one to finish
            if not batch:
                return
            try:
                out = await anyio.to_thread.run_sync(self.predict,
                                                     np.stack([im for im, _ in batch]))
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            for (_, future), row in zip(batch, out):
                if not future.done():
                    future.set_result(row)


def create_app(model: ImageClassifier, settings: ServeSettings = ServeSettings()) -> Starlette:
    """The ASGI app serving `model`.

    Endpoints: `GET /` (a page to drop an image on), `GET /health`, `POST /predict` (raw image
    bytes as `application/octet-stream` or `image/*`; JSON `{label, confidence,
    probabilities}`; for a multi-label model `{labels, probabilities, thresholds}`, `labels`
    those whose calibrated probability reaches their threshold; for an `ImageRegressor`
    `{value, lower, upper, interval}`, the bounds null when too few validation images bounded
    them).

    Example:
        >>> app = create_app(imagefit.load_model("runs/x"))   # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)      # doctest: +SKIP
    """
    model.embed(np.zeros((1, model.preprocessing_.image_size, model.preprocessing_.image_size, 3),
                         np.uint8))  # export/load the backbone now, not on the first request
    regression = not hasattr(model, "classes_")
    classes = [] if regression else list(model.classes_)
    multilabel = not regression and model.multilabel_
    task = "regress" if regression else "multilabel" if multilabel else "classify"
    size = model.preprocessing_.image_size
    background = model.preprocessing_.background
    limiter_box: list[_Limiter] = []  # made inside the running event loop
    batcher_box: list[_Batcher] = []  # (per loop: a test client may run each request in one)
    # Untrusted bytes are decoded in worker processes: a crash or a balloon costs a worker.
    decoder = DecoderPool(settings.max_concurrency, timeout_s=settings.timeout_s,
                          headroom_mb=settings.decode_memory_mb)
    workers = anyio.CapacityLimiter(settings.max_concurrency)

    def limiter() -> _Limiter:
        if not limiter_box:
            limiter_box.append(_Limiter(settings.max_concurrency, settings.max_queue))
        return limiter_box[0]

    def batcher() -> _Batcher:
        if not batcher_box or batcher_box[0].loop is not asyncio.get_running_loop():
            predict = model.predict_images if regression else model.predict_proba_images
            batcher_box[:] = [_Batcher(predict, settings.max_batch, settings.max_wait_s)]
        return batcher_box[0]

    def decode(data: bytes) -> np.ndarray:
        return decoder.decode(data, size=size, max_pixels=settings.max_pixels,
                              background=background)

    def answer(proba: np.ndarray) -> dict:
        if regression:  # `proba` is the predicted value
            value, half = float(proba), model.halfwidth_
            bounded = np.isfinite(half)
            return {"value": value, "lower": value - half if bounded else None,
                    "upper": value + half if bounded else None, "interval": model.interval}
        if multilabel:
            return {"labels": [c for c, p, t in zip(classes, proba, model.thresholds_)
                               if p >= t],
                    "probabilities": {c: float(p) for c, p in zip(classes, proba)},
                    "thresholds": {c: float(t) for c, t in zip(classes, model.thresholds_)}}
        best = int(proba.argmax())
        return {"label": classes[best], "confidence": float(proba[best]),
                "probabilities": {c: float(p) for c, p in zip(classes, proba)}}

    async def predict(request: Request) -> Response:
        if settings.api_key is not None and not _authorised(request, settings.api_key):
            return _error(401, "Missing or wrong API key (send 'Authorization: Bearer KEY').",
                          {"WWW-Authenticate": "Bearer"})
        content_type = request.headers.get("content-type", "application/octet-stream")
        media = content_type.split(";")[0].strip().lower()
        if media != "application/octet-stream" and not media.startswith("image/"):
            return _error(415, "Send the raw image bytes as application/octet-stream or "
                               "image/*, not a form.")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit()
                                     or int(declared) > settings.max_body_bytes):
            return _error(413, f"Images are limited to {settings.max_body_bytes:,} bytes.")
        if not limiter().try_admit():
            return _error(429, "Too many requests in flight; retry shortly.",
                          {"Retry-After": "1"})
        try:
            # One deadline for reading, queueing and predicting: a client trickling its upload
            # cannot hold an admission slot for longer than that.
            with anyio.fail_after(settings.timeout_s):
                data = await _read_capped(request, settings.max_body_bytes)
                if data is None:
                    return _error(413, f"Images are limited to {settings.max_body_bytes:,} "
                                       f"bytes.")
                fmt = sniff_format(data[:32])
                if fmt not in ALLOWED_FORMATS:
                    return _error(415, f"Not an accepted image; supported: "
                                       f"{', '.join(ALLOWED_FORMATS)}.")
                async with limiter().semaphore:
                    image = await anyio.to_thread.run_sync(decode, data, limiter=workers)
                proba = await batcher().submit(image)
            return JSONResponse(answer(proba), headers=_SECURITY_HEADERS)
        except ImageLoadError as exc:
            status = 415 if exc.reason in _UNSUPPORTED else 422
            return _error(status, f"The image could not be used ({exc.reason}).")
        except TimeoutError:
            return _error(503, "The prediction took too long; retry later.", {"Retry-After": "5"})
        except ClientDisconnect:
            return Response(status_code=400)
        finally:
            limiter().release()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "task": task,
                             "classes": classes, "backbone": model.backbone_name_,
                             "image_size": size, "auth": settings.api_key is not None},
                            headers=_SECURITY_HEADERS)

    async def page(request: Request) -> Response:
        return _static("index.html", "text/html; charset=utf-8")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        types = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
        if name not in types:  # a fixed list: no path from the request reaches the filesystem
            return _error(404, "Not found.")
        return _static(name, types[name])

    async def on_error(request: Request, exc: Exception) -> Response:
        log.error("internal error: %s: %s", type(exc).__name__, exc)
        return _error(500, "Internal error.")

    routes = [Route("/", page), Route("/health", health), Route("/predict", predict,
              methods=["POST"]), Route("/static/{name}", asset)]
    middleware = [Middleware(HostCheckMiddleware, allowed_hosts=settings.allowed_hosts)]
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={Exception: on_error})


class HostCheckMiddleware:
    """403 for requests whose `Host` header is not allowed: a web page that rebinds its own DNS
    name to 127.0.0.1 still sends its own name, so it cannot reach the service."""

    def __init__(self, app, allowed_hosts: tuple[str, ...]):
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed = {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not self.any_host:
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.strip("[]") not in self.allowed:
                response = _error(403, "Host not allowed.")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes `limit` (chunked bodies included)."""
    parts, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _authorised(request: Request, key: str) -> bool:
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode(), key.encode())


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status,
                        headers={**_SECURITY_HEADERS, **(headers or {})})


def _static(name: str, media_type: str) -> Response:
    body = resources.files("imagefit.serve").joinpath("static", name).read_bytes()
    headers = {**_SECURITY_HEADERS, "Content-Security-Policy": _PAGE_CSP,
               "Cache-Control": "no-cache"}
    return Response(body, media_type=media_type, headers=headers)


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the service on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
