"""The OpenAI-compatible VLM inside ComfyUI's real HTTP server, against the real scripted server:
the API key (or a near-copy of it) never reaches an error, /history, the queue, the server log
or any file ComfyUI writes, nor another host through a redirect or the environment's proxy (the
server runs with a dead proxy in its environment, which no request may use unless asked to);
a plain-text description, an over-long answer and JSON nested past any parser's depth are
handled as on the local path; Cancel (POST /interrupt) stops a waiting request.

A prompt is what a user queues: Load Image -> OpenAI-compatible VLM -> Concept Extractor ->
Preview Any (its description and report).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.comfy_harness import ComfyServer, free_port
from tests.fixtures.openai_server import PROSE_DESCRIPTION, serve
from tests.fixtures.tiny_qwen3vl import tiny_qwen3vl_folder

SERVED = "tiny-qwen3vl"
KEY = "sk-fmcgmLeakTest-7f3a9c1e5b2d4068aa11"
# A key pasted with a line break in it: either half would be a leak.
BROKEN_KEY = ("sk-fmcgmNewlineHead-4d1f", "TailHalf-9c1e5b2d4068bb22")
SECRETS = (KEY, *BROKEN_KEY)
# What a server may echo instead of the key: any of these would be a leak too.
NEAR_COPIES = (KEY[1:-1], KEY.upper(), KEY[:len(KEY) // 2], KEY[len(KEY) // 2:])
ENV = {"FMCGM_LEAK_TEST_KEY": KEY, "FMCGM_LEAK_TEST_BROKEN_KEY": "\n".join(BROKEN_KEY)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """ComfyUI (started with the keys in its environment) and the scripted OpenAI-compatible server."""
    base = tmp_path_factory.mktemp("vlm_openai_comfy")
    folder = tiny_qwen3vl_folder(base / "tiny_qwen3vl")
    with serve(folder, SERVED) as openai_url, pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():
            patch.setenv(name, value)
        dead_proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request through it fails
        proxies = {name: dead_proxy for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")}
        comfy = ComfyServer(base / "comfy", extra_env={**proxies, "no_proxy": "", "NO_PROXY": ""}).start()
        from tests.conftest import sample_picture_png
        image = comfy.upload_image("fmcgm_vlm_openai.png", sample_picture_png(64))
        try:
            yield comfy, openai_url, image
        finally:
            assert comfy.stop() == 0, comfy.log()[-3000:]


def extractor_prompt(openai_url: str, image: str, model: str, api_key_env: str = "", timeout: float = 60.0,
                     **vlm_inputs) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "FMCGMOpenAIVLM", "inputs": {"base_url": f"{openai_url}/v1", "model": model,
                                                        "api_key_env": api_key_env, "timeout": timeout,
                                                        "retries": 0, **vlm_inputs}},
        "3": {"class_type": "FMCGMConceptExtractor",
              "inputs": {"vlm": ["2", 0], "image": ["1", 0], "caption": "", "temperature": 0.0,
                         "max_new_tokens": 64, "max_concepts": 3, "seed": 0, "enable_thinking": False}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},  # description
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 3]}},  # report
    }


def post_prompt(comfy: ComfyServer, prompt: dict) -> tuple[int, str]:
    """POST /prompt as a script does; (status, body text), also for a refused prompt."""
    data = json.dumps({"prompt": prompt, "client_id": "fmcgm-tests"}).encode()
    try:
        status, body = comfy.request("/prompt", data, {"Content-Type": "application/json"})
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    return status, body.decode("utf-8", errors="replace")


def run(comfy: ComfyServer, prompt: dict) -> tuple[dict, str]:
    """Queue a prompt and wait for it; (history entry, the /prompt answer)."""
    status, answer = post_prompt(comfy, prompt)
    assert status == 200, answer
    return comfy.wait(json.loads(answer)["prompt_id"], timeout=300), answer


def error_message(entry: dict) -> str:
    return next(data for event, data in entry["status"]["messages"] if event == "execution_error")["exception_message"]


def assert_no_key_anywhere(comfy: ComfyServer, *texts: str) -> None:
    """Not in the given texts, /history, /queue, the server log, nor any file under ComfyUI's folders."""
    seen = {"texts": "\n".join(texts), "/history": json.dumps(comfy.get_json("/history")),
            "/queue": json.dumps(comfy.get_json("/queue")), "server log": comfy.log()}
    for path in Path(comfy.base).rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            seen[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    for where, text in seen.items():
        for secret in SECRETS:
            assert secret not in text, f"the API key leaked into {where}"
        for near in NEAR_COPIES:
            assert near.lower() not in text.lower(), f"a near-copy of the API key leaked into {where}"


# -- the key never leaks ---------------------------------------------------------------------

def test_a_key_with_a_line_break_is_refused_without_leaking(stack):
    comfy, openai_url, image = stack
    entry, answer = run(comfy, extractor_prompt(openai_url, image, SERVED, "FMCGM_LEAK_TEST_BROKEN_KEY"))
    message = error_message(entry)
    assert "The API key in FMCGM_LEAK_TEST_BROKEN_KEY contains a line break" in message
    assert_no_key_anywhere(comfy, answer)


def test_a_key_typed_as_the_variable_name_is_refused_before_the_prompt_runs(stack):
    comfy, openai_url, image = stack
    before = len(comfy.get_json("/history"))
    status, body = post_prompt(comfy, extractor_prompt(openai_url, image, SERVED, api_key_env=KEY))
    assert status == 400 and "api_key_env looks like an API key" in body
    assert len(comfy.get_json("/history")) == before  # never queued, so never stored
    assert_no_key_anywhere(comfy, body)


@pytest.mark.parametrize("mode", ["echo-key-error", "echo-key-stream", "echo"])
def test_a_server_echoing_the_key_does_not_leak_it(stack, mode):
    comfy, openai_url, image = stack
    entry, answer = run(comfy, extractor_prompt(openai_url, image, mode, "FMCGM_LEAK_TEST_KEY"))
    if mode != "echo":  # the error names the server's complaint, with the key cut out
        assert entry["status"]["status_str"] == "error" and "[redacted]" in error_message(entry)
    assert_no_key_anywhere(comfy, answer)


@pytest.mark.parametrize("mode, expected", [
    ("echo-key-variants", "answered HTTP 401"),
    ("redirect-302", "redirects are not followed, so that the API key is only sent to the configured host"),
    ("redirect-307", "a redirect to http://localhost:"),
    ("deep-200", "is not valid JSON (it is nested too deeply to read)"),
    ("deep-stream", "is not valid JSON (it is nested too deeply to read)"),
    ("deep-500", "answered HTTP 500")])
def test_echoed_near_copies_redirects_and_deep_json_are_clear_errors_without_the_key(stack, mode, expected):
    comfy, openai_url, image = stack
    entry, answer = run(comfy, extractor_prompt(openai_url, image, mode, "FMCGM_LEAK_TEST_KEY"))
    message = error_message(entry)
    assert entry["status"]["status_str"] == "error" and expected in message, message
    assert "Traceback" not in message and "RecursionError" not in message and len(message) < 1500
    assert requests_for(openai_url, "leak") == 0  # the other host never heard from us
    assert_no_key_anywhere(comfy, answer)
    assert comfy.get_json("/system_stats")  # and the server keeps serving


def test_the_environment_proxy_is_used_only_when_the_node_asks_for_it(stack):
    comfy, openai_url, image = stack
    entry, _ = run(comfy, extractor_prompt(openai_url, image, SERVED, "FMCGM_LEAK_TEST_KEY"))
    assert entry["status"]["status_str"] == "success", error_message(entry)  # straight past the dead proxy
    entry, answer = run(comfy, extractor_prompt(openai_url, image, SERVED, "FMCGM_LEAK_TEST_KEY",
                                                use_system_proxy=True))
    assert "through the proxy set in the environment" in error_message(entry)
    assert_no_key_anywhere(comfy, answer)


@pytest.mark.parametrize("base_url", [f"http://{KEY}@127.0.0.1:9/v1", f"http://127.0.0.1:9/v1?code={KEY}",
                                      f"http://127.0.0.1:9/v1/{KEY}"])
def test_a_credential_in_the_base_url_is_refused_before_the_prompt_runs_without_repeating_it(stack, base_url):
    comfy, openai_url, image = stack
    prompt = extractor_prompt(openai_url, image, SERVED)
    prompt["2"]["inputs"]["base_url"] = base_url
    status, body = post_prompt(comfy, prompt)
    assert status == 400 and "base_url carries a credential" in body
    assert_no_key_anywhere(comfy, body)


# -- answers are read as on the local path -----------------------------------------------------

def test_a_plain_text_description_becomes_the_description(stack):
    comfy, openai_url, image = stack
    entry, _ = run(comfy, extractor_prompt(openai_url, image, "prose-description"))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    assert entry["outputs"]["4"]["text"][0] == PROSE_DESCRIPTION
    assert "the answer is not JSON; used its text as the description" in entry["outputs"]["5"]["text"][0]


def test_an_over_long_answer_is_named_as_such(stack):
    comfy, openai_url, image = stack
    entry, _ = run(comfy, extractor_prompt(openai_url, image, "huge-1000000"))
    message = error_message(entry)
    assert "is over-long" in message and "200,000 characters" in message and "lower max_new_tokens" in message
    assert "no JSON object" not in message


# -- Cancel ------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["keepalive-2", "slow-30"])
def test_cancel_stops_a_waiting_request(stack, model):
    """POST /interrupt (the Cancel button) while the server keeps the stream alive or says nothing."""
    comfy, openai_url, image = stack
    status, answer = post_prompt(comfy, extractor_prompt(openai_url, image, model))
    assert status == 200, answer
    prompt_id = json.loads(answer)["prompt_id"]
    deadline = time.monotonic() + 120
    while requests_for(openai_url, model) < 1:  # the request is out: ComfyUI is waiting on the server
        assert time.monotonic() < deadline, "the VLM request never reached the server"
        time.sleep(0.05)
    time.sleep(0.5)
    pressed = time.monotonic()
    comfy.request("/interrupt", b"", method="POST")
    while prompt_id not in comfy.get_json(f"/history/{prompt_id}"):
        assert time.monotonic() - pressed < 30, "the prompt was not interrupted"
        time.sleep(0.02)
    latency = time.monotonic() - pressed
    print(f"\nMEASURED cancel through ComfyUI POST /interrupt during {model}: {latency:.3f} s")
    entry = comfy.get_json(f"/history/{prompt_id}")[prompt_id]
    assert any(event == "execution_interrupted" for event, _ in entry["status"]["messages"])
    assert latency < 1.0


def requests_for(openai_url: str, model: str) -> int:
    with urllib.request.urlopen(f"{openai_url}/debug/requests", timeout=10) as response:
        return json.load(response).get(model, 0)
