"""One HTTP request whose every wait honours a deadline and the user's Cancel.

Blocking socket calls (name lookup, connect, TLS handshake, reads) cannot be interrupted from
Python, and a socket timeout only bounds the silence between two packets: a server sending a
keep-alive comment every 2 s keeps a 3 s timeout alive for ever. So the request runs in a
worker thread (through urllib) and hands raw bytes
over a small queue; the calling thread waits on that queue in ticks of ``TICK_S`` and checks
the deadline and Cancel between ticks. When either fires, the socket is shut down, which ends
a blocked read at once, and the worker is left to finish on its own.

The request carries the API key, so it goes to the configured host and nowhere else: redirects
are never followed (a 3xx is handed back like any other answer, and the caller says where it
pointed), and the environment's proxies (``http_proxy``...) are used only when asked for.
"""
from __future__ import annotations

import functools
import http.client
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

# How often a waiting caller looks at the clock and at Cancel.
TICK_S = 0.1
# A worker's own socket timeout beyond the deadline: only so that an abandoned worker ends.
WORKER_GRACE_S = 1.0
READ_BYTES = 65536
ERROR_BODY_BYTES = 65536


class DeadlineExceeded(Exception):
    """The deadline passed while waiting; the caller words the message (it knows what it waited for)."""


class Deadline:
    """Seconds left for one answer, checked with the user's Cancel at every wait.

    ``cancel_check`` raises when the user cancelled (ComfyUI's
    ``throw_exception_if_processing_interrupted``); its exception propagates unchanged.
    """

    def __init__(self, seconds: float, cancel_check: Optional[Callable[[], None]] = None):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.cancel_check = cancel_check

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if self.cancel_check is not None:
            self.cancel_check()
        if self.remaining() <= 0:
            raise DeadlineExceeded

    def tick(self) -> float:
        """How long the next wait may block."""
        return max(0.001, min(TICK_S, self.remaining()))

    def sleep(self, seconds: float) -> None:
        """Sleep, ending at the deadline or on Cancel within a tick."""
        until = time.monotonic() + seconds
        while True:
            self.check()
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, self.tick()))


@dataclass(frozen=True)
class Head:
    status: int
    reason: str
    headers: Any  # http.client.HTTPMessage

    def header(self, name: str) -> str:
        return (self.headers.get(name) if self.headers is not None else None) or ""


class TransportError(Exception):
    """The request failed below HTTP; ``answered`` says whether a status line had arrived."""

    def __init__(self, cause: BaseException, answered: bool):
        super().__init__(type(cause).__name__)
        self.cause = cause
        self.answered = answered


class Exchange:
    """POST ``body`` to ``url`` in a worker thread; read the head, then the body in raw chunks.

    Use as a context manager: leaving it (answer read, error, Cancel) closes the connection.
    """

    def __init__(self, url: str, body: bytes, headers: dict[str, str], deadline: Deadline,
                 use_env_proxy: bool = False):
        self._deadline = deadline
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        proxies = urllib.request.ProxyHandler(None if use_env_proxy else {})  # None: from the environment
        self._opener = urllib.request.build_opener(proxies, _NoRedirects(), _TrackingHTTPHandler(self._track),
                                                   _TrackingHTTPSHandler(self._track))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        timeout = max(0.1, deadline.remaining()) + WORKER_GRACE_S
        self._worker = threading.Thread(target=self._run, args=(request, timeout), daemon=True,
                                        name="fmcgm-http-exchange")
        self._worker.start()

    def __enter__(self) -> "Exchange":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- caller side ---------------------------------------------------------------------------

    def head(self) -> Head:
        kind, value = self._next()
        if kind == "error":
            raise TransportError(value, answered=False)
        assert kind == "head"
        return value

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives (after ``head``); raises TransportError if the connection breaks."""
        while True:
            kind, value = self._next()
            if kind == "data":
                yield value
            elif kind == "end":
                return
            else:
                raise TransportError(value, answered=True)

    def close(self) -> None:
        """Stop the worker: shut the socket down so a blocked read returns now."""
        self._closed.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed or never connected

    def _next(self) -> tuple[str, Any]:
        while True:
            self._deadline.check()
            try:
                return self._queue.get(timeout=self._deadline.tick())
            except queue.Empty:
                continue

    # -- worker side ---------------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
        if self._closed.is_set():  # abandoned while connecting
            self.close()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=TICK_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, request: urllib.request.Request, timeout: float) -> None:
        response = None
        try:
            try:
                response = self._opener.open(request, timeout=timeout)
            except urllib.error.HTTPError as error:  # 4xx/5xx: a response like any other here
                response = error
            if not self._put(("head", Head(response.status, str(response.reason or ""), response.headers))):
                return
            limit = None if 200 <= response.status < 300 else ERROR_BODY_BYTES
            read = 0
            while limit is None or read < limit:
                data = response.read1(READ_BYTES) if hasattr(response, "read1") else response.read(READ_BYTES)
                if not data or not self._put(("data", data)):
                    break
                read += len(data)
            self._put(("end", None))
        except BaseException as exc:  # handed to the caller, who words it
            if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
                exc = exc.reason
            self._put(("error", exc))
        finally:
            if response is not None:
                try:
                    response.close()
                except Exception:
                    pass


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is not followed (urllib would send the Authorization header to the new host); the
    3xx then reaches the caller as an HTTPError, i.e. as an answer with its Location header."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _TrackedConnectionMixin:
    """Reports the connected socket, so that ``Exchange.close`` can shut it down."""

    def __init__(self, *args: Any, on_socket: Callable[[socket.socket], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._on_socket = on_socket

    def connect(self) -> None:
        super().connect()
        self._on_socket(self.sock)


class _TrackedHTTPConnection(_TrackedConnectionMixin, http.client.HTTPConnection):
    pass


class _TrackedHTTPSConnection(_TrackedConnectionMixin, http.client.HTTPSConnection):
    pass


class _TrackingHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, on_socket: Callable[[socket.socket], None]):
        super().__init__()
        self._connection = functools.partial(_TrackedHTTPConnection, on_socket=on_socket)

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._connection, req)


class _TrackingHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, on_socket: Callable[[socket.socket], None]):
        super().__init__()
        self._connection = functools.partial(_TrackedHTTPSConnection, on_socket=on_socket)

    def https_open(self, req: urllib.request.Request) -> Any:
        extra = {"check_hostname": self._check_hostname} if hasattr(self, "_check_hostname") else {}  # Python < 3.12
        return self.do_open(self._connection, req, context=self._context, **extra)
