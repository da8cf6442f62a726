"""The HTTP backend's deadline and Cancel in every wait, against the real scripted server
(tests/fixtures/openai_server.py): connect, waiting for the answer, a stream, the back-off.

The measured times are printed and written to test-artifacts/vlm_waits.json. The bounds
asserted are the behaviour promised (a deadline ends the answer, Cancel acts within 1 s), with
room for a loaded machine; they are not speed claims.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from fmcgm.vlm.base import ChatMessage, GenerationRequest, VLMError
from fmcgm.vlm.openai_backend import OpenAIBackend
from tests.fixtures.openai_server import serve, unaccepting_port

MODEL = "tiny-qwen3vl"
SCHEMA = {"type": "object", "properties": {"concepts": {"type": "array", "items": {"type": "string"}}},
          "required": ["concepts"]}
CANCEL_AFTER_S = 1.05  # off the 0.1 s tick grid, so the latency measured is not flattered
MEASURED: dict[str, float] = {}


@pytest.fixture(scope="module")
def server(artifacts):
    with serve(None, MODEL) as url:  # every behaviour here is scripted: no model needed
        yield url
    if MEASURED:
        path = artifacts / "vlm_waits.json"
        previous = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**previous, **MEASURED}, indent=1, sort_keys=True))
        print("\n" + "\n".join(f"MEASURED {name}: {seconds:.3f} s" for name, seconds in sorted(MEASURED.items())))


@pytest.fixture(scope="module")
def stalled_url():
    """A URL whose connect hangs: the server's accept queue is full."""
    listener, fillers, port = unaccepting_port()
    yield f"http://127.0.0.1:{port}/v1"
    for sock in (listener, *fillers):
        sock.close()


def request() -> GenerationRequest:
    return GenerationRequest(messages=[ChatMessage("user", "Which concepts?")], json_schema=SCHEMA,
                             max_new_tokens=64)


def requests_for(server: str, model: str) -> int:
    with urllib.request.urlopen(f"{server}/debug/requests", timeout=10) as response:
        return json.load(response).get(model, 0)


def timed_failure(backend: OpenAIBackend, expected=VLMError) -> tuple[float, BaseException]:
    started = time.monotonic()
    with pytest.raises(expected) as info:
        backend.generate(request())
    return time.monotonic() - started, info.value


# -- the deadline covers the whole answer ---------------------------------------------------

DEADLINE_CASES = {
    # name: (model or None for the stalled connect, deadline s, what the message says)
    "keep-alive comments every 2 s": ("keepalive-2", 3.0, "still waiting for the rest of the answer"),
    "an answer dripping 1 character / 0.5 s": ("drip-0.5", 3.0, "characters of the answer had arrived"),
    "no answer (server sleeps 30 s)": ("slow-30", 2.0, "still waiting for an answer"),
    "connect never completes": (None, 2.0, "still waiting for an answer"),
}


@pytest.mark.parametrize("case", DEADLINE_CASES, ids=lambda c: c.split(" (")[0].replace(" ", "-"))
def test_the_deadline_ends_every_wait(server, stalled_url, case):
    model, deadline, says = DEADLINE_CASES[case]
    url = f"{server}/v1" if model else stalled_url
    elapsed, error = timed_failure(OpenAIBackend(url, model or MODEL, timeout=deadline, retries=2))
    MEASURED[f"deadline {deadline:g} s, {case}"] = elapsed
    assert f"within the {deadline:g} s deadline" in str(error) and says in str(error)
    assert deadline <= elapsed < deadline + 1.0


def test_a_retry_after_beyond_the_deadline_fails_at_once(server):
    elapsed, error = timed_failure(OpenAIBackend(f"{server}/v1", "retry-after-3600", timeout=5, retries=2))
    MEASURED["deadline 5 s, Retry-After 3600"] = elapsed
    message = str(error)
    assert "HTTP 503" in message and "the server asked to retry after 3600 s, beyond the 5 s deadline" in message
    assert "no retry was made" in message
    assert elapsed < 1.0 and requests_for(server, "retry-after-3600") == 1


def test_retries_and_their_waits_share_the_deadline(server):
    # Retry-After 1 s, ten retries allowed, 3.5 s deadline: about three waits fit, then the next would not.
    elapsed, error = timed_failure(OpenAIBackend(f"{server}/v1", "retry-after-1", timeout=3.5, retries=10))
    MEASURED["deadline 3.5 s, Retry-After 1 with 10 retries"] = elapsed
    assert "beyond the 3.5 s deadline" in str(error)
    assert elapsed < 3.5 + 0.5
    assert 2 <= requests_for(server, "retry-after-1") <= 4


# -- Cancel takes effect within a second in every wait -------------------------------------

class Cancelled(Exception):
    pass


class CancelButton:
    """Pressed from another thread after ``after`` s, like the user clicking Cancel; the backend
    polls ``check`` (ComfyUI's throw_exception_if_processing_interrupted in production)."""

    def __init__(self, after: float):
        self.pressed_at: float | None = None
        self._pressed = threading.Event()
        self._timer = threading.Timer(after, self._press)

    def _press(self) -> None:
        self.pressed_at = time.monotonic()
        self._pressed.set()

    def check(self) -> None:
        if self._pressed.is_set():
            raise Cancelled

    def __enter__(self) -> "CancelButton":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


CANCEL_CASES = {
    "connect": None,
    "read (waiting for the answer)": "slow-30",
    "stream (keep-alive comments only)": "keepalive-2",
    "stream (answer dripping)": "drip-0.5",
    "back-off (Retry-After 20)": "retry-after-20",
}


@pytest.mark.parametrize("wait", CANCEL_CASES, ids=lambda c: c.split(" (")[0] + ("-drip" if "drip" in c else ""))
def test_cancel_takes_effect_within_a_second(server, stalled_url, wait):
    model = CANCEL_CASES[wait]
    url = f"{server}/v1" if model else stalled_url
    earlier = set(threading.enumerate())
    with CancelButton(CANCEL_AFTER_S) as button:
        backend = OpenAIBackend(url, model or MODEL, timeout=60, retries=2, cancel_check=button.check)
        started = time.monotonic()
        with pytest.raises(Cancelled):
            backend.generate(request(), on_token=lambda n, total: None)
        stopped = time.monotonic()
    assert button.pressed_at is not None, "the answer ended before Cancel was pressed"
    latency = stopped - button.pressed_at
    MEASURED[f"cancel during {wait}"] = latency
    assert started + CANCEL_AFTER_S <= stopped and latency < 1.0
    if model:  # the connection was shut down, so the worker thread ends too (a connect cannot be cut
        # short: that worker ends at its own socket timeout, the deadline)
        assert workers_end(earlier, within=2.0)


def workers_end(earlier: set, within: float) -> bool:
    """Whether the exchange threads started since ``earlier`` all end within ``within`` s."""
    until = time.monotonic() + within
    while any(t.name == "fmcgm-http-exchange" and t not in earlier for t in threading.enumerate()):
        if time.monotonic() > until:
            return False
        time.sleep(0.05)
    return True
