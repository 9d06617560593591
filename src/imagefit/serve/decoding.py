"""Decoding untrusted uploads in worker processes the service owns (reliability reference, C3):
each worker decodes one image at a time under an address-space cap and a deadline, so a file
that crashes its decoder, balloons past the cap or hangs costs that worker, not the service.
A worker that died or overran is killed and replaced on the next request; the request that
caused it is answered as an unusable image (`ImageLoadError`, 422).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys

import numpy as np

from imagefit.data.images import load_image
from imagefit.errors import ImageLoadError

# Address space a worker may add to what it holds after start-up: a decode past it gets a
# MemoryError (reported as too_large). Start-up (PyTorch, Pillow) maps ~3 GB of address space
# that is mostly never touched, hence a cap relative to it rather than an absolute one.
DEFAULT_HEADROOM_MB = 1024
_CONTEXT = multiprocessing.get_context("forkserver" if sys.platform.startswith("linux")
                                       else "spawn")
if _CONTEXT.get_start_method() == "forkserver":  # workers fork from a server that has us loaded
    # (and PyTorch, the resizer's, so that a replacement worker starts in milliseconds)
    _CONTEXT.set_forkserver_preload([__name__, "torch"])
# A 1x1 PNG.
_TINY_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
                          "0000000c4944415408d763f8ffff3f0005fe02fea7d6a4b40000000049454e44ae"
                          "426082")


def _address_space_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # no /proc: no cap (the pixel cap and the deadline still hold)
        return None


def _decode_forever(conn, headroom_bytes: int, decode) -> None:
    """A worker: cap its own address space, then answer decode jobs until the pipe closes."""
    import resource

    # Warm-up: codecs, plugins and the resizer (PyTorch, imported on first use) loaded before
    # the cap.
    decode(_TINY_PNG, size=2)
    current = _address_space_bytes()
    if current is not None and headroom_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (current + headroom_bytes,) * 2)
    while True:
        try:
            data, kwargs = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", decode(data, **kwargs)))
        except ImageLoadError as exc:
            conn.send(("error", exc.reason, exc.message))
        except MemoryError:
            conn.send(("error", "too_large", "decoding it needs more memory than the service "
                                             "allows one image"))


class _Worker:
    def __init__(self, headroom_bytes: int, decode):
        self.conn, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_decode_forever,
                                        args=(child, headroom_bytes, decode), daemon=True)
        self.process.start()
        child.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class DecoderPool:
    """`load_image` in `workers` processes (made on first use, replaced when one dies).

    Args:
        workers: processes, i.e. decodes that can run at once (callers beyond wait).
        timeout_s: the longest one decode may take; past it the worker is killed.
        headroom_mb: address space a worker may add to what it holds after start-up.
        decode: the function a worker runs (module-level, so a worker can import it).
    """

    def __init__(self, workers: int = 2, *, timeout_s: float = 30.0,
                 headroom_mb: int = DEFAULT_HEADROOM_MB, decode=load_image):
        self.timeout_s = timeout_s
        self.headroom_bytes = headroom_mb << 20
        self.decode_fn = decode
        self.replaced = 0  # workers killed and replaced so far
        self._slots: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        for _ in range(workers):
            self._slots.put(None)

    def decode(self, data: bytes, **kwargs) -> np.ndarray:
        """`load_image(data, **kwargs)` in a worker.

        Raises:
            ImageLoadError: the image cannot be used, or its decoder died or overran (the
                worker is then replaced).
        """
        worker = self._slots.get() or _Worker(self.headroom_bytes, self.decode_fn)
        try:
            worker.conn.send((data, kwargs))
            if not worker.conn.poll(self.timeout_s):
                raise TimeoutError
            reply = worker.conn.recv()
        except (EOFError, OSError, TimeoutError) as exc:
            worker.kill()
            worker = None
            self.replaced += 1
            what = "took too long" if isinstance(exc, TimeoutError) else "crashed"
            raise ImageLoadError("corrupt", f"its decoder {what}") from None
        finally:
            self._slots.put(worker)
        if reply[0] == "error":
            raise ImageLoadError(reply[1], reply[2])
        return reply[1]

    def close(self) -> None:
        """Stop the idle workers (the pool makes new ones if used again)."""
        for _ in range(self._slots.qsize()):
            worker = self._slots.get()
            if worker is not None:
                worker.kill()
            self._slots.put(None)
