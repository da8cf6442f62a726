"""The OpenAI-compatible HTTP backend against a real server process (tests/fixtures/openai_server.py)
serving the tiny Qwen3-VL through the transformers backend, plus its failure modes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest

from fmcgm.vlm.base import ChatMessage, GenerationRequest, VLMError
from fmcgm.vlm.openai_backend import OpenAIBackend, chat_completions_url
from tests.fixtures.tiny_qwen3vl import tiny_qwen3vl_folder

REPO = Path(__file__).resolve().parent.parent
MODEL = "tiny-qwen3vl"
SCHEMA = {
    "type": "object",
    "properties": {"concepts": {"type": "array", "minItems": 1, "maxItems": 3,
                                "items": {"type": "string", "pattern": "^[a-z]{1,8}$"}}},
    "required": ["concepts"],
    "additionalProperties": False,
}


def picture():
    from PIL import Image
    return Image.new("RGB", (64, 48), (20, 90, 200))


def request(**overrides) -> GenerationRequest:
    fields = dict(messages=[ChatMessage("system", "Answer with JSON only."),
                            ChatMessage("user", "Which concepts are in the picture?", [picture()])],
                  json_schema=SCHEMA, temperature=0.7, max_new_tokens=96, seed=7)
    fields.update(overrides)
    return GenerationRequest(**fields)


def read_line(stream, timeout: float) -> str:
    """First stdout line of the server, or '' if it does not come in time."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tiny_qwen3vl_folder(tmp_path_factory.mktemp("tiny_qwen3vl_server"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "tests.fixtures.openai_server", "--model-dir", str(folder),
                             "--model-name", MODEL, "--port", "0", "--delay", "0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = read_line(proc.stdout, timeout=180)
        assert line.startswith("LISTENING "), f"server did not start (exit code {proc.poll()}): {line!r}"
        yield line.split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def request_count(server: str, model: str) -> int:
    with urllib.request.urlopen(f"{server}/debug/requests", timeout=10) as response:
        return json.load(response).get(model, 0)


def client(server: str, model: str = MODEL, **kwargs) -> OpenAIBackend:
    kwargs.setdefault("timeout", 60)
    kwargs.setdefault("backoff", 0.01)
    return OpenAIBackend(server + "/v1", model, **kwargs)


def free_closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- success -------------------------------------------------------------------------------

def test_streamed_answer_follows_the_schema(server):
    calls = []
    text = client(server).generate(request(), on_token=lambda n, total: calls.append((n, total)))
    jsonschema.validate(json.loads(text), SCHEMA)
    assert len(calls) >= 2 and [n for n, _ in calls] == list(range(1, len(calls) + 1))
    assert all(total == 96 for _, total in calls)


def test_non_streamed_answer_follows_the_schema(server):
    calls = []
    text = client(server, stream=False).generate(request(seed=3), on_token=lambda n, total: calls.append(n))
    jsonschema.validate(json.loads(text), SCHEMA)
    assert len(calls) == 1 and calls[0] >= 1


def test_server_that_ignores_stream_true_is_read_as_one_body(server):
    text = client(server, "nostream").generate(request())
    jsonschema.validate(json.loads(text), SCHEMA)


def test_request_reaches_the_server_as_specified(server, monkeypatch):
    monkeypatch.setenv("FMCGM_TEST_API_KEY", "sk-test-123")
    backend = client(server, "echo", api_key_env="FMCGM_TEST_API_KEY", schema_name="concepts")
    seen = json.loads(backend.generate(request()))
    assert seen["authorization"] == "Bearer sk-test-123"
    assert (seen["temperature"], seen["max_tokens"], seen["seed"], seen["stream"]) == (0.7, 96, 7, True)
    assert seen["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "concepts", "schema": SCHEMA, "strict": True}}
    assert seen["messages"][1] == {"role": "user", "text": "Which concepts are in the picture?",
                                   "image_sizes": [[64, 48]]}
    assert "sk-test-123" not in backend.describe() and "FMCGM_TEST_API_KEY" in backend.describe()


@pytest.mark.parametrize("mode", ["flaky-503", "flaky-429"])
def test_overload_is_retried_then_succeeds(server, mode):
    text = client(server, mode, retries=2).generate(request(json_schema=None, max_new_tokens=4))
    assert isinstance(text, str)
    assert request_count(server, mode) == 2


# -- failures ------------------------------------------------------------------------------

def test_missing_api_key_variable_is_named():
    backend = OpenAIBackend("http://127.0.0.1:9/v1", MODEL, api_key_env="FMCGM_TEST_KEY_THAT_IS_NOT_SET")
    with pytest.raises(VLMError, match="FMCGM_TEST_KEY_THAT_IS_NOT_SET is not set"):
        backend.generate(request())


def test_connection_refused_names_the_url_and_the_server():
    port = free_closed_port()
    backend = OpenAIBackend(f"http://127.0.0.1:{port}", MODEL, retries=1, backoff=0.01, timeout=5)
    with pytest.raises(VLMError) as info:
        backend.generate(request())
    message = str(info.value)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in message
    assert "connection refused" in message and "server must be running" in message and "2 attempts" in message


def test_timeout_is_reported_without_retrying(server):
    backend = client(server, "slow", timeout=0.5, retries=2)
    started = time.monotonic()
    with pytest.raises(VLMError, match=r"did not answer within the 0.5 s timeout"):
        backend.generate(request())
    assert time.monotonic() - started < 3.0


def test_http_500_is_retried_and_reported_with_the_body(server):
    with pytest.raises(VLMError) as info:
        client(server, "error-500", retries=2).generate(request())
    message = str(info.value)
    assert "HTTP 500" in message and "CUDA out of memory" in message and "after 3 attempts" in message
    assert request_count(server, "error-500") == 3


def test_client_errors_are_not_retried(server):
    with pytest.raises(VLMError, match="HTTP 400.*unsupported parameter"):
        client(server, "error-400", retries=2).generate(request())
    assert request_count(server, "error-400") == 1
    with pytest.raises(VLMError, match="HTTP 404.*does not exist.*check the base URL"):
        client(server, "no-such-model", retries=2).generate(request())
    assert request_count(server, "no-such-model") == 1


def test_malformed_body_is_reported(server):
    with pytest.raises(VLMError, match="not valid JSON"):
        client(server, "malformed").generate(request())


def test_answer_without_choices_is_reported(server):
    with pytest.raises(VLMError, match="no 'choices'"):
        client(server, "nochoices").generate(request())


def test_non_json_answer_to_a_schema_request_is_reported(server):
    with pytest.raises(VLMError, match="no JSON object although a JSON schema was requested"):
        client(server, "nonjson").generate(request())
    prose = client(server, "nonjson").generate(request(json_schema=None))
    assert prose.startswith("I am sorry")  # free text is fine when no schema was asked for


def test_bad_image_is_rejected_by_the_server_and_reported(server):
    backend = client(server)
    body = backend.build_request(request())
    body["messages"][1]["content"][0]["image_url"]["url"] = "data:image/png;base64,AAAA"
    http_request = urllib.request.Request(backend.url, data=json.dumps(body).encode(),
                                          headers={"Content-Type": "application/json"})
    with pytest.raises(VLMError, match="HTTP 400.*does not decode to an image"):
        backend._open(http_request)


def test_raising_from_on_token_stops_the_stream(server):
    class Cancelled(Exception):
        pass

    def cancel(n: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        client(server, "echo").generate(request(), on_token=cancel)


def test_base_url_forms():
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"
    with pytest.raises(VLMError, match="must start with http"):
        chat_completions_url("localhost:8000")


def test_image_helpers_convert_comfy_tensors_and_limit_size():
    import base64
    import io

    import torch
    from PIL import Image

    from fmcgm.vlm.images import limit_pixels, png_data_uri, tensor_to_pil, to_rgb

    batch = torch.zeros(2, 8, 12, 3)
    batch[1, ..., 0] = 1.0
    first, second = tensor_to_pil(batch)
    assert first.size == (12, 8) and first.mode == "RGB" and second.getpixel((0, 0)) == (255, 0, 0)
    assert limit_pixels(Image.new("RGB", (400, 300)), 1200).size == (40, 30)
    transparent = to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 0)))
    assert transparent.getpixel((0, 0)) == (255, 255, 255)  # composited on white, not black
    uri = png_data_uri(second)
    assert uri.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert decoded.size == (12, 8) and decoded.getpixel((0, 0)) == (255, 0, 0)
