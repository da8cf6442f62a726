"""The OpenAI-compatible HTTP backend against a real server process (tests/fixtures/openai_server.py)
serving the tiny Qwen3-VL through the transformers backend, plus its failure modes."""
from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
import urllib.parse
import urllib.request

import jsonschema
import pytest

from fmcgm.vlm.base import MAX_ANSWER_CHARS, GenerationRequest, VLMError
from fmcgm.vlm.openai_backend import OpenAIBackend, chat_completions_url
from tests.fixtures.openai_server import huge_answer, serve
from tests.fixtures.tiny_qwen3vl import tiny_qwen3vl_folder
from tests.vlm_requests import json_request, plain_picture

MODEL = "tiny-qwen3vl"
SCHEMA = {
    "type": "object",
    "properties": {"concepts": {"type": "array", "minItems": 1, "maxItems": 3,
                                "items": {"type": "string", "pattern": "^[a-z]{1,8}$"}}},
    "required": ["concepts"],
    "additionalProperties": False,
}


COLOUR = (20, 90, 200)


def request(**overrides) -> GenerationRequest:
    return json_request(SCHEMA, "Which concepts are in the picture?", COLOUR,
                        **{"temperature": 0.7, "max_new_tokens": 96, "seed": 7, **overrides})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tiny_qwen3vl_folder(tmp_path_factory.mktemp("tiny_qwen3vl_server"))
    with serve(folder, MODEL) as url:
        yield url


def request_count(server: str, model: str) -> int:
    return debug(server, "requests").get(model, 0)


def debug(server: str, what: str) -> dict:
    with urllib.request.urlopen(f"{server}/debug/{what}", timeout=10) as response:
        return json.load(response)


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
    # The key arrived (the server saw exactly this header) but the server's echo of it is redacted.
    assert debug(server, "auth")["echo"] == hashlib.sha256(b"Bearer sk-test-123").hexdigest()
    assert seen["authorization"] == "Bearer [redacted]"
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
    with pytest.raises(VLMError, match=r"did not finish its answer within the 0.5 s deadline \(still waiting "
                                       r"for an answer\)"):
        backend.generate(request())
    assert time.monotonic() - started < 3.0
    assert request_count(server, "slow") == 1


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


def test_non_json_answer_to_a_schema_request_is_handed_back_with_a_warning(server, caplog):
    # As the local backend does: the caller's parser and repairs decide what to make of it.
    with caplog.at_level(logging.WARNING, logger="fmcgm.vlm.openai_backend"):
        text = client(server, "nonjson").generate(request())
    assert text == "I am sorry, but I cannot describe the concepts in this image."
    assert "may not support response_format json_schema" in caplog.text
    caplog.clear()
    prose = client(server, "nonjson").generate(request(json_schema=None))
    assert prose.startswith("I am sorry") and not caplog.text  # free text is expected when no schema was asked


def test_bad_image_is_rejected_by_the_server_and_reported(server, monkeypatch):
    backend = client(server)
    build = backend.build_request

    def corrupt_image(req):  # what a broken client-side encoder would send
        body = build(req)
        body["messages"][1]["content"][0]["image_url"]["url"] = "data:image/png;base64,AAAA"
        return body
    monkeypatch.setattr(backend, "build_request", corrupt_image)
    with pytest.raises(VLMError, match="HTTP 400.*does not decode to an image"):
        backend.generate(request())


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
    azure = "https://r.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21"
    assert chat_completions_url(azure) == azure  # the query stays on the endpoint
    assert chat_completions_url("http://h:1/v1/?api-version=1") == "http://h:1/v1/chat/completions?api-version=1"
    assert chat_completions_url("http://h/openai?x=1#top") == "http://h/openai/v1/chat/completions?x=1"


def test_a_query_string_reaches_the_server_on_the_endpoint(server):
    """The scripted server routes only /v1/chat/completions: the query must come after that path."""
    answer = json.loads(OpenAIBackend(server + "/v1?api-version=2024-10-21", "echo", timeout=60).generate(request()))
    assert answer["path"] == "/v1/chat/completions?api-version=2024-10-21"


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


# -- answer size -----------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False], ids=["stream", "body"])
def test_an_over_long_answer_is_named_as_such(server, stream):
    with pytest.raises(VLMError) as info:
        client(server, "huge-1000000", stream=stream).generate(request(max_new_tokens=2048))
    message = str(info.value)
    assert "is over-long" in message and f"{MAX_ANSWER_CHARS:,} characters" in message
    assert "max tokens was 2,048" in message and "lower max_new_tokens" in message
    assert "no JSON object" not in message


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "body"])
def test_a_long_valid_answer_within_the_limit_parses(server, stream):
    from fmcgm.parsing import extract_json
    chars = MAX_ANSWER_CHARS - 1000
    text = client(server, f"huge-{chars}", stream=stream).generate(request(max_new_tokens=32768))
    assert text == huge_answer(chars) and len(text) == chars
    assert len(extract_json(text)["description"]) == chars - len('{"description": ""}')


# -- plain-text answers go to the same repairs as on the local path --------------------------

def test_a_plain_text_description_becomes_the_description(server):
    from fmcgm.extraction import extract_graph
    from tests.fixtures.openai_server import PROSE_DESCRIPTION
    result = extract_graph(client(server, "prose-description"), plain_picture(COLOUR), temperature=0.0, max_new_tokens=64,
                           max_concepts=3)
    assert result.stage_answers["description"] == PROSE_DESCRIPTION  # handed back as it came
    assert result.graph.description == PROSE_DESCRIPTION
    assert any("not JSON; used its text as the description" in line for line in result.repairs)
    assert result.graph.concepts  # the later stages were answered by the model under their schemas


# -- keys ------------------------------------------------------------------------------------

KEY = "sk-fmcgm-test-0123456789abcdefSECRET"


@pytest.mark.parametrize("mode", ["echo-key-error", "echo-key-stream"])
def test_a_server_echoing_the_key_has_it_redacted(server, monkeypatch, mode):
    monkeypatch.setenv("FMCGM_TEST_API_KEY", KEY)
    with pytest.raises(VLMError) as info:
        client(server, mode, api_key_env="FMCGM_TEST_API_KEY", retries=0).generate(request())
    message = str(info.value)
    assert "[redacted]" in message and KEY not in message and "0123456789abcdef" not in message
    assert debug(server, "auth")[mode] == hashlib.sha256(f"Bearer {KEY}".encode()).hexdigest()  # it was sent


@pytest.mark.parametrize("key, kind", [(KEY[:10] + "\n" + KEY[10:], "a line break"),
                                       (KEY[:10] + "\x1b" + KEY[10:], "a control character"),
                                       (KEY[:10] + " " + KEY[10:], "a space"),
                                       (KEY[:10] + "é" + KEY[10:], "a non-ASCII character")])
def test_a_malformed_key_is_refused_without_printing_it(monkeypatch, key, kind):
    monkeypatch.setenv("FMCGM_TEST_API_KEY", key)
    backend = OpenAIBackend("http://127.0.0.1:9/v1", MODEL, api_key_env="FMCGM_TEST_API_KEY")
    with pytest.raises(VLMError) as info:
        backend.generate(request())
    message = str(info.value)
    assert f"contains {kind} at character 11" in message and "FMCGM_TEST_API_KEY" in message
    assert KEY[:10] not in message and KEY[10:] not in message
    assert info.value.__cause__ is None and info.value.__context__ is None  # nothing chained that quotes it


@pytest.mark.parametrize("typed", [KEY, "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", "sk_live_51HxYzAbCdEf0123456789",
                                   "Bearer sk-abc", "my key", "0123456789abcdef0123456789abcdef0123"])
def test_a_key_typed_as_the_variable_name_is_refused_without_echoing_it(typed):
    with pytest.raises(VLMError) as info:
        OpenAIBackend("http://127.0.0.1:9/v1", MODEL, api_key_env=typed)
    message = str(info.value)
    assert typed not in message and "NAME of an environment variable" in message
    for part in typed.split():
        assert len(part) < 4 or part not in message


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "HF_TOKEN", "OPENROUTER_API_KEY", "my_vllm_key_2",
                                  "hf_token", "AZURE_OPENAI_API_KEY_WESTEUROPE_2"])
def test_ordinary_variable_names_are_accepted(name):
    backend = OpenAIBackend("http://127.0.0.1:9/v1", MODEL, api_key_env=f"  {name} ")
    assert backend.describe().endswith(f"key from ${name}")


@pytest.mark.parametrize("url, secret", [
    ("http://user:hunter2@127.0.0.1:8000/v1", "hunter2"), ("http://127.0.0.1:8000/v1?api_key=abc", "abc"),
    ("https://h/v1?token=abc", "abc"), ("https://fn.azurewebsites.net/api/v1?code=zq9Xw", "zq9Xw"),
    (f"http://{KEY}@127.0.0.1:8000/v1", KEY), (f"https://h/v1/{KEY}/", KEY), (f"https://h/v1?k={KEY}", KEY),
    ("https://h/AbCdEfGh12345678IjKlMnOp/v1", "AbCdEfGh12345678IjKlMnOp"), (KEY, KEY)])
def test_credentials_in_the_base_url_are_refused_without_repeating_them(url, secret):
    with pytest.raises(VLMError) as info:
        OpenAIBackend(url, MODEL)
    message = str(info.value)
    assert secret not in message and secret[:8] not in message
    assert "carries a credential" in message or "not shown: it looks like a key" in message


@pytest.mark.parametrize("url", ["https://gateway.ai.cloudflare.com/v1/0123456789abcdef0123456789abcdef/gw/openai",
                                 "http://127.0.0.1:8000/v1?api-version=2024-10-21"])
def test_ids_and_versions_in_the_base_url_are_not_mistaken_for_keys(url):
    assert OpenAIBackend(url, MODEL).url.startswith(url.split("?")[0])


@pytest.mark.parametrize("mode", ["redirect-302", "redirect-307"])
def test_a_redirect_is_not_followed_so_the_key_stays_with_the_configured_host(server, monkeypatch, mode):
    monkeypatch.setenv("FMCGM_TEST_API_KEY", KEY)
    with pytest.raises(VLMError) as info:
        client(server, mode, api_key_env="FMCGM_TEST_API_KEY").generate(request())
    message = str(info.value)
    assert f"answered HTTP {mode[-3:]}" in message and "a redirect to http://localhost:" in message
    assert "redirects are not followed" in message and "set base_url" in message
    assert "leak" not in debug(server, "auth") and request_count(server, mode) == 1  # not retried either


def test_the_environment_proxy_is_used_only_when_asked_for(server, monkeypatch):
    """A proxy from the environment would receive the key even for a 127.0.0.1 server."""
    dead_proxy = f"http://127.0.0.1:{free_closed_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert json.loads(client(server, "echo").generate(request()))["model"] == "echo"  # straight to the server
    with pytest.raises(VLMError, match=r"Could not connect .*connection refused.* through the proxy set in the"):
        client(server, "echo", use_env_proxy=True, retries=0).generate(request())


def test_near_copies_of_an_echoed_key_are_redacted(server, monkeypatch):
    monkeypatch.setenv("FMCGM_TEST_API_KEY", KEY)
    with pytest.raises(VLMError) as info:
        client(server, "echo-key-variants", api_key_env="FMCGM_TEST_API_KEY").generate(request())
    message = str(info.value)
    assert "answered HTTP 401" in message and message.count("[redacted]") == 3
    for near in (KEY[1:-1], KEY.upper(), KEY[:len(KEY) // 2], KEY[len(KEY) // 2:], KEY[4:12]):
        assert near.lower() not in message.lower()


@pytest.mark.parametrize("mode", ["deep-200", "deep-stream", "deep-500"])
def test_deeply_nested_json_is_the_backends_error_and_a_5xx_is_retried(server, mode):
    before = request_count(server, mode)
    with pytest.raises(VLMError) as info:
        client(server, mode, retries=1).generate(request())
    message = str(info.value)
    assert len(message) < 1500 and str(server) in message
    if mode == "deep-500":
        assert "answered HTTP 500" in message and "after 2 attempts" in message
        assert request_count(server, mode) - before == 2
    else:
        assert "not valid JSON (it is nested too deeply to read)" in message
        assert request_count(server, mode) - before == 1


@pytest.mark.parametrize("body", [{"choices": {"0": 1}}, {"choices": [{"message": ["x"]}]},
                                  {"choices": [{"message": {"content": {"a": 1}}}]}])
def test_answers_of_the_wrong_shape_are_reported_not_raised(body):
    """Lists where objects belong and the like: the backend's error (or an empty answer), never a raw
    Python exception."""
    from fmcgm.vlm.api_keys import Redactor
    from fmcgm.vlm.openai_answers import AnswerReader
    reader = AnswerReader("http://h/v1/chat/completions", MODEL, Redactor(None), None, 8)
    try:
        content, _ = reader._read_body(json.dumps(body).encode())
    except VLMError as error:
        assert "has no 'choices'" in str(error)
    else:
        assert content == ""


def test_redactor_removes_keys_and_credentials_but_leaves_prose():
    from fmcgm.vlm.api_keys import Redactor
    redact = Redactor(KEY)
    server_text = (f'bad key {KEY}; {json.dumps(KEY)}; {urllib.parse.quote(KEY)}; Authorization: Basic dXNlcjpw; '
                   '{"api_key": "other-secret-1"} x-api-key=zzz9 Bearer abc.def sk-0123456789abcdefghij')
    cleaned = redact(server_text)
    for secret in (KEY, "dXNlcjpw", "other-secret-1", "zzz9", "abc.def", "sk-0123456789abcdefghij"):
        assert secret not in cleaned
    prose = "A flag bearer walks past; authorization pending."
    assert redact.secrets(prose + KEY) == prose + "[redacted]"


@pytest.mark.parametrize("near", [KEY[2:], KEY[:-2], KEY[1:-1], KEY.upper(), KEY.lower(), KEY[:9] + "\n" + KEY[9:],
                                  KEY[:9] + "\\n" + KEY[9:], " ".join(KEY), KEY[:8], KEY[-8:]])
def test_the_redactor_removes_near_copies_of_the_key(near):
    from fmcgm.vlm.api_keys import Redactor
    cleaned = Redactor(KEY)(f"before {near} after")
    assert cleaned == "before [redacted] after"


def test_the_redactor_leaves_text_that_shares_less_than_eight_characters_with_the_key():
    from fmcgm.vlm.api_keys import Redactor
    text = "sk-fmcg is short; 0123456 too; a test of SECRET things"
    assert Redactor(KEY).secrets(text) == text


def test_retry_after_as_an_http_date():
    import email.utils
    backend = client("http://127.0.0.1:9")
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 115 < backend._delay(0, when) <= 121
    assert backend._delay(1, "soon") == pytest.approx(0.02)  # unreadable: our own backoff


def test_server_text_is_redacted_before_it_is_cut_to_an_excerpt():
    from fmcgm.vlm.api_keys import Redactor
    from fmcgm.vlm.openai_answers import excerpt
    redact = Redactor(KEY)
    for text in ("x" * 290 + KEY, " \n" * 5000 + KEY, (b"y" * 295 + KEY.encode())):
        shown = excerpt(text, redact=redact)
        assert KEY[:8] not in shown and len(shown) <= 303


# -- HTTPS -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """The scripted server over HTTPS with a self-signed certificate for 127.0.0.1 (no model)."""
    import shutil
    import subprocess
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with serve(None, MODEL, tls=(cert, key)) as url:
        yield url, cert


def test_https_carries_the_request_and_the_key(tls_server, monkeypatch):
    url, cert = tls_server
    assert url.startswith("https://")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate, as a user trusts a CA
    monkeypatch.setenv("FMCGM_TEST_API_KEY", KEY)
    seen = json.loads(client(url, "echo", api_key_env="FMCGM_TEST_API_KEY").generate(request()))
    assert seen["authorization"] == "Bearer [redacted]" and seen["stream"] is True
    assert debug_tls(url, cert)["echo"] == hashlib.sha256(f"Bearer {KEY}".encode()).hexdigest()


def test_https_with_an_untrusted_certificate_is_refused_clearly(tls_server):
    url, _ = tls_server
    with pytest.raises(VLMError, match=r"Could not connect to https://127\.0\.0\.1:\d+/v1/chat/completions "
                                       r"\(SSLCertVerificationError.*certificate verify failed"):
        client(url, "echo", retries=0).generate(request())


def debug_tls(url: str, cert) -> dict:
    import ssl
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"{url}/debug/auth", timeout=10, context=context) as response:
        return json.load(response)
