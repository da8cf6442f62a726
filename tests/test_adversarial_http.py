"""Adversarial model answers and bad inputs over real HTTP.

* Parity: the same answers through the in-process path (a ``VLMBackend`` returning the text)
  and the HTTP path (``OpenAIBackend`` -> a real OpenAI-compatible server on 127.0.0.1
  answering the same text) give the same graph, the same repairs, the same counterfactual.
* Through ComfyUI's real HTTP server (Load Image -> OpenAI-compatible VLM -> Concept Extractor
  -> Concept Manipulator, outputs captured in /history): the issue's adversarial answer
  ("snow storm" for do(weather = sunny), an "old" woman though age is no descendant) in manual
  and automatic mode never reaches a prompt output; do(weather = Rainy) on rainy weather
  changes nothing and asks the VLM nothing; over-long and invisible-character inputs get clear,
  short errors or reported removals, and the server keeps serving.
"""
from __future__ import annotations

import json
import re

import pytest

from fmcgm.extraction import extract_graph
from fmcgm.manipulator import propagate, propose_interventions
from fmcgm.parsing import ModelAnswerError
from fmcgm.vlm.openai_backend import OpenAIBackend
from tests.comfy_harness import ComfyServer
from tests.fixtures.scripted_vlm import StageScript, serve_script

DESCRIPTION = json.dumps({"description": "A young woman with wet hair in the rain"})
CONCEPTS = json.dumps({"concepts": [
    {"name": "weather", "value": "rainy", "description": "the weather"},
    {"name": "hair", "value": "wet", "description": "the woman's hair"},
    {"name": "age", "value": "young", "description": "how old she looks"},
    {"name": "gender", "value": "woman", "description": "perceived gender"}]})
EDGES = json.dumps({"edges": [{"cause": "weather", "effect": "hair", "confidence": 0.9}]})
# The issue's adversarial manipulator answer for do(weather = sunny).
PROPAGATION = json.dumps({
    "descendant_values": {"hair": "dry", "age": "old"},
    "interventional_prompt": "a young woman in a snow storm",
    "edit_prompts": [{"concept": "weather", "prompt": "snow storm"}, {"concept": "hair", "prompt": "dry hair"}],
    "counterfactual_prompt": "an old woman in a snow storm"})
PROPOSALS = json.dumps({"interventions": [
    {"concept": "weather", "value": "sunny", **json.loads(PROPAGATION)},
    {"concept": "age", "value": "old", "descendant_values": {},
     "interventional_prompt": "an old woman in a snow storm",
     "edit_prompts": [{"concept": "age", "prompt": "a young face"}],
     "counterfactual_prompt": "an old woman, rainy weather, wet hair"}]})
SCRIPT = {"description": DESCRIPTION, "concepts": CONCEPTS, "edges": EDGES, "propagation": PROPAGATION,
          "proposals": PROPOSALS}
EXPECTED_VALUES = {"weather": "sunny", "hair": "dry", "age": "young", "gender": "woman"}


def picture():
    from PIL import Image
    return Image.new("RGB", (48, 32), (40, 90, 160))


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


def assert_no_adversarial_words(prompts) -> None:
    for text in prompts:
        assert not words(text) & {"snow", "storm", "old"}, text


@pytest.fixture(scope="module")
def scripted():
    with serve_script(SCRIPT) as (url, backend):
        yield url, backend


# ================================================================ parity: in-process vs HTTP

PARITY_CASES = {
    "plain-text description": {"description": "A young woman with wet hair, standing in the rain."},
    "fenced answers after reasoning": {
        "description": "<think>rain, a woman</think>```json\n" + DESCRIPTION + "\n```",
        "concepts": "Here you go:\n```json\n" + CONCEPTS + "\n```"},
    "invisible characters in names": {
        "concepts": CONCEPTS.replace('"weather"', '"wea\\u200bther\\u202e"').replace('"rainy"', '"rai\\u0000ny"'),
        "edges": EDGES.replace('"weather"', '"weather\\u2066"')},
    "python literals and a truncated list": {
        "concepts": repr(json.loads(CONCEPTS)), "edges": EDGES[:-12]},
    "empty description falls back to the caption": {"description": '{"description": ""}'},
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_http_and_local_paths_repair_the_same_answers_the_same_way(scripted, case):
    url, served = scripted
    served.script = {**SCRIPT, **PARITY_CASES[case]}
    local = extract_graph(StageScript(served.script), picture(), caption="a woman in the rain", max_new_tokens=256)
    remote = extract_graph(OpenAIBackend(url, "scripted", retries=0, timeout=30), picture(),
                           caption="a woman in the rain", max_new_tokens=256)
    assert remote.graph == local.graph and remote.repairs == local.repairs
    # the HTTP path hands the raw text on (a server splits reasoning off; the backend puts it back inline)
    assert {k: re.sub(r"\s", "", v) for k, v in remote.stage_answers.items()} == \
        {k: re.sub(r"\s", "", v) for k, v in local.stage_answers.items()}
    if case == "invisible characters in names":
        assert local.graph.names[0] == "weather" and local.graph.concept("weather").value == "rainy"
        assert any("U+202E RIGHT-TO-LEFT OVERRIDE" in r for r in local.repairs)
    cf_local = propagate(StageScript(served.script), local.graph, "weather", "sunny", image=picture())
    cf_remote = propagate(OpenAIBackend(url, "scripted", retries=0, timeout=30), remote.graph, "weather", "sunny",
                          image=picture())
    assert cf_remote.to_dict() == cf_local.to_dict()
    assert cf_local.values == EXPECTED_VALUES


def test_an_unreadable_answer_is_the_same_error_on_both_paths(scripted):
    url, served = scripted
    served.script = {**SCRIPT, "concepts": "I cannot list concepts for this picture."}
    errors = []
    for backend in (StageScript(served.script), OpenAIBackend(url, "scripted", retries=0, timeout=30)):
        with pytest.raises(ModelAnswerError) as error:
            extract_graph(backend, picture())
        errors.append(str(error.value))
    assert errors[0] == errors[1] and "plain text" in errors[0]


def test_adversarial_prompts_never_leave_the_manipulator_over_http(scripted):
    url, served = scripted
    served.script = dict(SCRIPT)
    backend = OpenAIBackend(url, "scripted", retries=0, timeout=30)
    graph = extract_graph(backend, picture()).graph
    cf = propagate(backend, graph, "weather", "sunny", image=picture())
    assert cf.values == EXPECTED_VALUES
    assert_no_adversarial_words(p.text for p in cf.encoder_prompts())
    proposals = propose_interventions(backend, graph, n=2, image=picture())
    assert [(p.concept, p.value) for p in proposals] == [("weather", "sunny"), ("age", "old")]
    for counterfactual in proposals:  # "a young face" for do(age = old) is refused too
        assert not any("young face" in p.text for p in counterfactual.encoder_prompts())
    assert_no_adversarial_words(p.text for p in proposals[0].encoder_prompts())


# ================================================================ through ComfyUI's HTTP server

@pytest.fixture(scope="module")
def comfy(tmp_path_factory, scripted):
    server = ComfyServer(tmp_path_factory.mktemp("adversarial_comfy")).start()
    from tests.conftest import sample_picture_png
    image = server.upload_image("fmcgm_adversarial.png", sample_picture_png(48))
    try:
        yield server, image
    finally:
        assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture
def stack(comfy, scripted):
    """(ComfyUI server, its uploaded picture, the scripted server's URL, its backend) with the issue's script."""
    url, served = scripted
    served.script = dict(SCRIPT)
    return (*comfy, url, served)


def manipulator_prompt(url: str, image: str, **inputs) -> dict:
    manipulator = {"causal_graph": ["3", 0], "vlm": ["2", 0], "image": ["1", 0], "mode": "manual",
                   "concept": "weather", "value": "sunny", "descendant_values": "", "num_interventions": 2,
                   "temperature": 0.0, "max_new_tokens": 256, "seed": 0, "enable_thinking": False, **inputs}
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "FMCGMOpenAIVLM", "inputs": {"base_url": url, "model": "scripted", "api_key_env": "",
                                                        "timeout": 60.0, "retries": 0}},
        "3": {"class_type": "FMCGMConceptExtractor",
              "inputs": {"vlm": ["2", 0], "image": ["1", 0], "caption": "", "temperature": 0.0,
                         "max_new_tokens": 256, "max_concepts": 4, "seed": 0, "enable_thinking": False}},
        "4": {"class_type": "FMCGMConceptManipulator", "inputs": manipulator},
        "5": {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["4", 0]}},  # the counterfactuals
    }
    for number, output in enumerate(("counterfactual_prompt", "interventional_prompt", "edit_prompts", "report")):
        prompt[str(6 + number)] = {"class_type": "FMCGMTest_Capture",
                                   "inputs": {"value": ["4", 1 + number if output != "report" else 5]}}
    return prompt


def run(server: ComfyServer, prompt: dict) -> dict:
    entry = server.wait(server.queue(prompt), timeout=300)
    return entry


def captured(entry: dict, node: str):
    return json.loads(entry["outputs"][node]["fmcgm_capture"][0])


def error_of(entry: dict) -> str:
    assert entry["status"]["status_str"] == "error", entry["status"]
    return next(d for e, d in entry["status"]["messages"] if e == "execution_error")["exception_message"]


@pytest.mark.parametrize("mode", ["manual", "automatic"])
def test_the_issue_answer_through_comfyui_reaches_no_prompt_output(stack, mode):
    server, image, url, _ = stack
    entry = run(server, manipulator_prompt(url, image, mode=mode))
    assert entry["status"]["status_str"] == "success", entry["status"]
    counterfactuals = captured(entry, "5")[0]
    first = counterfactuals[0]
    assert {**{c["name"]: c["value"] for c in first["graph"]["concepts"]}, first["concept"]: first["value"],
            **first["descendant_values"]} == EXPECTED_VALUES
    # every string output of the node, and every prompt a CSG node encodes (edit and protect phrases)
    for number, cf in enumerate(counterfactuals):
        strings = [captured(entry, node)[number] for node in ("6", "7", "8")]
        strings += [p["prompt"] for p in cf["edit_prompts"] + cf["protect_prompts"]]
        if cf["concept"] == "weather":
            assert_no_adversarial_words(strings)
        else:  # automatic mode's do(age = old): its "a young face" is refused, "old" is its value
            assert (cf["concept"], cf["value"]) == ("age", "old")
            assert not any("young" in text for text in strings), strings
    assert first["edit_prompts"][0] == {"concept": "weather", "prompt": "sunny weather", "role": "intervened"}
    assert first["counterfactual_prompt"] == "sunny weather, dry hair, young age, woman gender"
    report = captured(entry, "9")[0]
    assert ("replaced the model's edit prompt for 'weather' 'snow storm': it does not say 'sunny', the value of "
            "'weather'; used 'sunny weather', built from the values") in report
    assert "replaced the model's counterfactual prompt 'an old woman in a snow storm'" in report
    assert "ignored the new value 'old' for 'age': it is not a descendant of 'weather'" in report


def test_a_do_that_changes_nothing_changes_nothing_through_comfyui(stack):
    server, image, url, served = stack
    asked = len(served.requests)
    entry = run(server, manipulator_prompt(url, image, value="Rainy"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    (cf,) = captured(entry, "5")[0]
    assert cf["value"] == "rainy" and cf["changed"] == [] and cf["descendant_values"] == {"hair": "wet"}
    assert "propagation" not in [s for s in served.stages_asked()[asked:]]  # the VLM was not asked
    report = captured(entry, "9")[0]
    assert "do(weather = Rainy) changes nothing: 'weather' already is 'rainy'" in report
    assert "the VLM was not asked" in report


def test_bad_inputs_get_short_clear_errors_and_the_server_keeps_serving(stack):
    server, image, url, served = stack
    asked = len(served.requests)
    huge_value = "v" * (2 * 1024 * 1024)
    message = error_of(run(server, manipulator_prompt(url, image, value=huge_value)))
    assert "value (the new value of 'weather') is 2,097,152 characters long" in message
    assert "the limit is 200" in message and len(message) < 600
    assert not any(huge_value[:1000] in r.messages[-1].text for r in served.requests[asked:])  # never sent
    huge_name = "n" * (1024 * 1024)
    message = error_of(run(server, manipulator_prompt(url, image, concept=huge_name)))
    assert "concept is 1,048,576 characters long" in message and len(message) < 600
    assert huge_name[:2000] not in server.log()  # nor echoed whole in the server's log
    # invisible characters in the typed concept and value: removed, and the report says so
    entry = run(server, manipulator_prompt(url, image, mode="graph-only", concept="wea\u200bther\u202e",
                                           value="sun\x00ny", descendant_values="hair: dr\u2066y"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    (cf,) = captured(entry, "5")[0]
    assert (cf["concept"], cf["value"], cf["descendant_values"]) == ("weather", "sunny", {"hair": "dry"})
    report = captured(entry, "9")[0]
    assert "concept: removed invisible or control characters (U+200B ZERO WIDTH SPACE, U+202E RIGHT-TO-LEFT " \
           "OVERRIDE)" in report
    assert "value: removed invisible or control characters (U+0000 NUL)" in report
    assert "the proposed value for 'hair': removed invisible or control characters (U+2066 LEFT-TO-RIGHT " \
           "ISOLATE)" in report
    # and an ordinary prompt still runs
    assert run(server, manipulator_prompt(url, image))["status"]["status_str"] == "success"


# ================================================================ prompts that passed the agreement check, through ComfyUI's HTTP API

# Prompts that passed the agreement check before: symbols, emoji, fullwidth text, a value bound to the
# wrong concept, a concept name said again and again. do(weather = sunny); hair becomes dry.
SYMBOL_PROMPTS = {
    "symbols and fullwidth": {
        "interventional_prompt": "weather != sunny, wet hair, young age, woman gender",
        "edit_prompts": [{"concept": "weather", "prompt": "\U0001f6ab sunny weather"},
                         {"concept": "hair", "prompt": "dry hair \u26c8\ufe0f\U0001f327\ufe0f"}],
        "counterfactual_prompt": "\uff53\uff55\uff4e\uff4e\uff59 \uff57\uff45\uff41\uff54\uff48\uff45\uff52, dry hair, "
                                 "young age, woman gender"},
    "swapped and repeated": {
        "interventional_prompt": "rain rain rain in sunny weather, wet hair, young age, woman gender",
        "edit_prompts": [{"concept": "weather", "prompt": "\u2600 \U0001f327 weather"},
                         {"concept": "hair", "prompt": "hair hair dry hair"}],
        "counterfactual_prompt": "dry weather, sunny hair, young age, woman gender"},
}


@pytest.mark.parametrize("case", list(SYMBOL_PROMPTS))
def test_prompts_with_symbols_or_wrong_bindings_are_replaced_through_comfyui(stack, case):
    server, image, url, served = stack
    served.script["propagation"] = json.dumps({"descendant_values": {"hair": "dry"}, **SYMBOL_PROMPTS[case]})
    seed = 2000 + list(SYMBOL_PROMPTS).index(case)  # a prompt of its own: ComfyUI would answer from its cache
    entry = run(server, manipulator_prompt(url, image, seed=seed))
    assert entry["status"]["status_str"] == "success", entry["status"]
    (cf,) = captured(entry, "5")[0]
    assert [p["prompt"] for p in cf["edit_prompts"]] == ["sunny weather", "dry hair"]
    assert captured(entry, "7")[0] == "sunny weather, wet hair, young age, woman gender"  # interventional
    assert captured(entry, "6")[0] == "sunny weather, dry hair, young age, woman gender"  # counterfactual
    report = captured(entry, "9")[0]
    for what in ("edit prompt for 'weather'", "edit prompt for 'hair'", "interventional prompt",
                 "counterfactual prompt"):
        assert f"replaced the model's {what}" in report, report


def test_a_huge_picture_is_refused_before_the_vae_or_resized_when_asked(comfy):
    """The issue's 6000 x 4000 picture: the Picture Size Limit node (between Load Image and VAE Encode)
    says its size and how to resize it, or scales it down; the server keeps serving."""
    import io

    from PIL import Image
    server, _ = comfy
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 4000), (40, 120, 200)).save(buffer, format="PNG")
    huge = server.upload_image("fmcgm_huge.png", buffer.getvalue())

    def limited(if_larger: str) -> dict:
        return run(server, {
            "1": {"class_type": "LoadImage", "inputs": {"image": huge}},
            "2": {"class_type": "FMCGMPictureSizeLimit",
                  "inputs": {"image": ["1", 0], "max_megapixels": 2.0, "if_larger": if_larger}},
            "3": {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["2", 0]}}})

    message = error_of(limited("refuse"))
    assert "is 6000 x 4000 pixels (24.0 megapixels), over the limit of 2 megapixels" in message
    assert "Resize it to at most 1728 x 1152" in message and "set if_larger to 'resize'" in message
    entry = limited("resize")
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert captured(entry, "3") == [{"shape": [1, 1152, 1728, 3]}]


def test_the_viewer_draws_64_concepts_and_2016_edges_through_comfyui(comfy):
    import time

    from fmcgm.graph import CausalGraph, Concept, Edge
    server, _ = comfy
    names = [f"concept {i}" for i in range(64)]
    graph = CausalGraph(tuple(Concept(n, f"value {i}") for i, n in enumerate(names)),
                        tuple(Edge(a, b) for i, a in enumerate(names) for b in names[i + 1:]), "a scene")
    started = time.monotonic()
    entry = run(server, {
        "1": {"class_type": "FMCGMCausalGraphEditor",
              "inputs": {"graph_json": graph.to_json(), "intervene_concept": "concept 40", "intervene_value": "new",
                         "edit_base": ""}},
        "2": {"class_type": "FMCGMCausalGraphViewer",
              "inputs": {"width": 1024, "height": 1024, "graph": ["1", 0], "intervene_concept": ["1", 1],
                         "intervene_value": ["1", 2]}}})
    print(f"\nMEASURED Causal Graph Viewer, 64 concepts / 2,016 edges, through ComfyUI: "
          f"{time.monotonic() - started:.2f} s (prompt queued to done)")
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(entry["outputs"]["2"]["images"]) == 1
