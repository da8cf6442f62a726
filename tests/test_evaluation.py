"""The paper's evaluation (Sec. 6): VLM-Eff with scripted and tiny real VLMs, LPIPS on a random
VGG16 backbone saved in torchvision's file format, and the node in ComfyUI's real executor."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fmcgm.evaluation import (VGG16_FILE, VGG16_URL, LPIPSMetric, LPIPSWeightsError,
                              effectiveness_schema, evaluate_counterfactuals, find_vgg16_weights, vlm_effectiveness)
from fmcgm.graph import CausalGraph
from fmcgm.manipulator import apply_intervention
from fmcgm.roles import Role
from tests.comfy_harness import PromptError
from tests.fixtures.tiny_vgg16 import save_random_vgg16

GRAPH = {"description": "a woman with wet hair standing in the rain",
         "concepts": [{"name": "weather", "value": "rainy"}, {"name": "hair", "value": "wet"},
                      {"name": "umbrella", "value": "open"}, {"name": "age", "value": "young adult"},
                      {"name": "shirt", "value": "red"}],
         "edges": [{"cause": "weather", "effect": "hair"}, {"cause": "weather", "effect": "umbrella"}]}


def counterfactual():
    """do(weather = sunny): hair changes, umbrella stays open (unchanged descendant), age and shirt invariant."""
    return apply_intervention(CausalGraph.from_dict(GRAPH), "weather", "sunny",
                              proposed={"hair": "dry", "umbrella": "open"})


class ScriptedVLM:
    """A VLMBackend that answers the given strings in turn and records the requests."""

    name = "scripted"

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.requests = []

    def generate(self, request, on_token=None):
        self.requests.append(request)
        if on_token is not None:
            on_token(1, request.max_new_tokens)
        return self.answers.pop(0)

    def describe(self) -> str:
        return "scripted test VLM"


def picture(seed=0, size=32):
    from PIL import Image
    generator = torch.Generator().manual_seed(seed)
    array = (torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(array)


# ---------------------------------------------------------------- VLM-Eff

def test_request_lists_every_concept_once_with_an_exact_schema_and_the_image():
    cf = counterfactual()
    answer = json.dumps({"verdicts": {"weather": True, "hair": False, "age": True, "shirt": False}})
    backend = ScriptedVLM(answer)
    ticks = []
    image = picture()
    result = vlm_effectiveness(backend, image, cf, temperature=0.0, max_new_tokens=99, seed=7,
                               on_token=lambda done, total: ticks.append((done, total)))
    request = backend.requests[0]
    assert request.temperature == 0.0 and request.max_new_tokens == 99 and request.seed == 7
    assert ticks == [(1, 99)]
    assert request.messages[-1].images == [image]
    verdicts = request.json_schema["properties"]["verdicts"]
    assert set(verdicts["required"]) == set(verdicts["properties"]) == {"weather", "hair", "age", "shirt"}
    assert verdicts["additionalProperties"] is False
    prompt = request.messages[-1].text
    # Counterfactual values for the edits, factual values for the invariants; the unchanged descendant is left out.
    assert '"weather" = "sunny"' in prompt and '"hair" = "dry"' in prompt and '"shirt" = "red"' in prompt
    assert "umbrella" not in prompt and "rainy" not in prompt
    assert [v.concept for v in result.verdicts] == ["weather", "hair"]
    assert result.score == 0.5 and result.unjudged == ()
    assert [v.role for v in result.invariance_verdicts] == [Role.INVARIANT, Role.INVARIANT]
    assert result.invariance == 0.5  # separate from the score
    assert any("VLM-Eff 0.500 (1/2)" in line for line in result.report_lines())


def test_without_invariance_only_the_counterfactual_values_are_asked():
    backend = ScriptedVLM('{"verdicts": {"weather": true, "hair": true}}')
    result = vlm_effectiveness(backend, picture(), counterfactual(), invariance=False)
    assert set(backend.requests[0].json_schema["properties"]["verdicts"]["properties"]) == {"weather", "hair"}
    assert result.score == 1.0 and result.invariance is None and result.invariance_verdicts == ()


@pytest.mark.parametrize("answer, score, repaired", [
    # fenced, trailing comma, yes/no strings, other case and separators
    ('Sure!\n```json\n{"verdicts": {"Weather": "yes", "HAIR": "no",}}\n```', 0.5, "read as"),
    # the array form, as models that ignore the schema answer
    ('{"verdicts": [{"concept": "weather", "present": true}, {"name": "hair", "answer": "present"}]}', 1.0, None),
    # no "verdicts" wrapper, Python literals
    ("{'weather': True, 'hair': False}", 0.5, "top level"),
    # truncated at max_new_tokens: the last concept is lost, not the rest
    ('{"verdicts": {"weather": true, "hai', 1.0, "no verdict for 'hair'"),
])
def test_malformed_answers_are_repaired(answer, score, repaired):
    result = vlm_effectiveness(ScriptedVLM(answer), picture(), counterfactual(), invariance=False)
    assert result.score == score
    if repaired:
        assert any(repaired in line for line in result.repairs), result.repairs


def test_unjudged_concepts_are_excluded_from_the_score_and_reported():
    answer = json.dumps({"verdicts": [{"concept": "weather", "present": False}, {"concept": "hair", "present": "maybe"},
                                      {"concept": "sky", "present": True}, {"concept": "age", "present": True},
                                      {"concept": "shirt", "present": True}, {"concept": "shirt", "present": False}]})
    result = vlm_effectiveness(ScriptedVLM(answer), picture(), counterfactual())
    assert result.score == 0.0  # weather only; hair ('maybe') is unjudged, not absent
    assert result.unjudged == ("hair",)
    assert result.invariance_unjudged == ("shirt",)  # conflicting verdicts
    assert result.invariance == 1.0
    text = "\n".join(result.report_lines())
    assert "unjudged (left out of VLM-Eff): hair" in text
    assert "unknown concept 'sky'" in text and "conflicting verdicts for 'shirt'" in text


@pytest.mark.parametrize("answer", ["", "I cannot tell from this picture.", "[1, 2, 3]", '{"verdicts": 5}', "{{{"])
def test_unreadable_answers_leave_everything_unjudged_without_raising(answer):
    result = vlm_effectiveness(ScriptedVLM(answer), picture(), counterfactual())
    assert result.score is None and result.invariance is None
    assert result.unjudged == ("weather", "hair")
    assert result.repairs


def test_backend_errors_and_cancellation_propagate():
    class Cancelling(ScriptedVLM):
        def generate(self, request, on_token=None):
            on_token(1, 2)

    def cancel(done, total):
        raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        vlm_effectiveness(Cancelling(), picture(), counterfactual(), on_token=cancel)


def test_tiny_qwen3vl_gives_a_schema_valid_in_range_result(tmp_path):
    from fmcgm.vlm.constrained import xgrammar_available
    from fmcgm.vlm.transformers_backend import TransformersBackend
    from tests.fixtures.tiny_qwen3vl import build_tiny_qwen3vl
    backend = TransformersBackend(str(build_tiny_qwen3vl(tmp_path / "vlm", variant="dense", seed=0)), device="cpu",
                                  dtype="fp32", max_image_tokens=64)
    cf = counterfactual()
    result = vlm_effectiveness(backend, picture(size=64), cf, temperature=0.0, max_new_tokens=128, seed=0)
    assert [v.concept for v in result.verdicts] == ["weather", "hair"]
    assert [v.concept for v in result.invariance_verdicts] == ["age", "shirt"]
    for value in (result.score, result.invariance):
        assert value is None or 0.0 <= value <= 1.0
    if xgrammar_available():  # constrained decoding: random weights, but every concept judged
        names = {"weather", "hair", "age", "shirt"}
        data = json.loads(result.answer)
        assert set(data) == {"verdicts"} and set(data["verdicts"]) == names
        assert all(isinstance(v, bool) for v in data["verdicts"].values())
        assert result.unjudged == () and result.score in (0.0, 0.5, 1.0)


def test_schema_covers_exactly_the_given_names():
    schema = effectiveness_schema(["a b", "c"])
    inner = schema["properties"]["verdicts"]
    assert inner["required"] == ["a b", "c"] and inner["additionalProperties"] is False
    assert all(p == {"type": "boolean"} for p in inner["properties"].values())


# ---------------------------------------------------------------- LPIPS

@pytest.fixture(scope="module")
def vgg_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lpips")
    save_random_vgg16(directory / VGG16_FILE)
    return directory


@pytest.fixture(scope="module")
def metric(vgg_dir):
    return LPIPSMetric(vgg_dir / VGG16_FILE)


def _image(seed, size=48):
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def test_lpips_structure(metric):
    x, y = _image(0), _image(1)
    near, far = 0.9 * x + 0.1 * y, 0.2 * x + 0.8 * y
    d = metric.distances(x, torch.cat([x, near, far, y])).values
    assert len(d) == 4 and all(isinstance(v, float) for v in d)
    assert abs(d[0]) < 1e-6  # LPIPS(x, x) = 0
    assert 0 < d[1] < d[2]  # a bigger perturbation of the same image is further
    assert metric.distance(y, x) == pytest.approx(d[3], rel=1e-4, abs=1e-6)  # symmetric


def test_lpips_batches_broadcast_and_pil_tensor_agree(metric):
    x, y = _image(2), _image(3)
    pairwise = metric.distances(torch.cat([x, y]), torch.cat([y, x])).values
    assert pairwise[0] == pytest.approx(pairwise[1], rel=1e-4)
    from fmcgm.evaluation import _pil
    as_pil = metric.distances([_pil(x[0].permute(2, 0, 1))], [_pil(y[0].permute(2, 0, 1))]).values
    assert as_pil[0] == pytest.approx(pairwise[0], rel=1e-2)  # PIL is 8-bit
    with pytest.raises(ValueError, match="2 original images for 3 edited"):
        metric.distances(torch.cat([x, y]), torch.cat([x, y, x]))


def test_lpips_resizes_the_edited_image_and_says_so(metric):
    x = _image(4, size=48)
    big = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), size=(96, 96), mode="bilinear").permute(0, 2, 3, 1)
    result = metric.distances(x, big)
    assert result.notes and "resized to the original's 48x48" in result.notes[0]
    assert 0 <= result.values[0] < metric.distance(x, _image(5))
    with pytest.raises(ValueError, match="at least 16 pixels"):
        metric.distances(_image(0, size=8), _image(1, size=8))


def test_missing_or_wrong_weights_say_what_to_download(tmp_path):
    with pytest.raises(LPIPSWeightsError) as error:
        find_vgg16_weights([tmp_path / "models" / "lpips", tmp_path / "hub" / "checkpoints"])
    assert VGG16_URL in str(error.value) and str(tmp_path / "models" / "lpips") in str(error.value)
    import lpips
    from pathlib import Path
    linear = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    with pytest.raises(LPIPSWeightsError, match="linear-layer file"):
        LPIPSMetric(linear)
    (tmp_path / "broken.pth").write_bytes(b"not a torch file")
    with pytest.raises(LPIPSWeightsError, match="download"):
        LPIPSMetric(tmp_path / "broken.pth")


def test_evaluate_counterfactuals_report_and_nan_when_skipped(metric):
    cf = counterfactual()
    x = _image(6)
    backend = ScriptedVLM('{"verdicts": {"weather": true, "hair": false, "age": true, "shirt": true}}')
    summary = evaluate_counterfactuals(x, x * 0.5, [cf], backend=backend, lpips_metric=metric)
    assert summary.vlm_eff == 0.5 and summary.lpips > 0 and summary.invariance == 1.0
    report = summary.report()
    assert "do(weather = sunny)" in report and "0.500 (1/2)" in report and "scripted test VLM" in report
    skipped = evaluate_counterfactuals(x, x, [cf])
    assert math.isnan(skipped.vlm_eff) and math.isnan(skipped.lpips)
    assert "LPIPS skipped" in skipped.report() and "VLM-Eff skipped" in skipped.report()
    with pytest.raises(ValueError, match="edited: 2 edited image"):
        evaluate_counterfactuals(x, torch.cat([x, x]), [cf])


# ---------------------------------------------------------------- the node in ComfyUI

@pytest.fixture(scope="module")
def node_setup(comfy, comfy_dirs, vgg_dir):
    import folder_paths
    from tests.conftest import sample_picture_png
    from tests.fixtures.tiny_qwen3vl import build_tiny_qwen3vl
    folder_paths.add_model_folder_path("lpips", str(vgg_dir))
    (comfy_dirs["input"] / "fmcgm_eval_128.png").write_bytes(sample_picture_png(128))
    llm = comfy_dirs["models"] / "LLM" / "tiny-qwen3vl-dense"
    if not (llm / "config.json").exists():
        build_tiny_qwen3vl(llm, variant="dense", seed=0)
    return comfy


def node_module():
    from tests.comfy_harness import pack_module
    return pack_module("nodes.evaluation_nodes")


def _capture(outputs, node):
    return json.loads(outputs[node]["fmcgm_capture"][0])


def _counterfactual_nodes() -> dict:
    return {
        "2": {"class_type": "LoadImage", "inputs": {"image": "fmcgm_eval_128.png"}},
        "7": {"class_type": "FMCGMCausalGraphEditor", "inputs": {
            "graph_json": json.dumps(GRAPH), "intervene_concept": "weather", "intervene_value": "sunny",
            "edit_base": ""}},
        "8": {"class_type": "FMCGMConceptManipulator", "inputs": {
            "causal_graph": ["7", 0], "mode": "graph-only", "concept": ["7", 1], "value": ["7", 2],
            "descendant_values": "hair: dry\numbrella: closed", "num_interventions": 1, "temperature": 0.2,
            "max_new_tokens": 64, "seed": 0, "enable_thinking": False}},
    }


def _evaluate(edited, **inputs) -> dict:
    return {"class_type": "FMCGMEvaluateCounterfactual", "inputs": {
        "original": ["2", 0], "edited": edited, "counterfactual": ["8", 0], "lpips_weights": VGG16_FILE,
        "check_invariance": True, "temperature": 0.0, "max_new_tokens": 128, "seed": 0, **inputs}}


def test_node_scores_a_csg_edit_of_a_graph_only_counterfactual(node_setup):
    prompt = _counterfactual_nodes()
    prompt.update({
        "1": {"class_type": "FMCGMTest_TinySDXLCheckpointLoader", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "FMCGMDPMSolverInversion", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "steps": 6, "skip": 0.15, "seed": 0, "source_scale": 3.5,
            "zero_noise_steps": 1, "timesteps_per_call": 1, "sigma_table": "model"}},
        "10": {"class_type": "FMCGMCSGEditsFromCounterfactual", "inputs": {
            "clip": ["1", 1], "counterfactual": ["8", 0], "edit_guidance": 8.0, "threshold": 0.7, "warmup": 1,
            "cooldown": -1, "include_intervened": True, "attention_tokens": "prompt"}},
        "11": {"class_type": "FMCGMCSGSampler", "inputs": {
            "model": ["1", 0], "inversion": ["4", 0], "edits": ["10", 0], "edit_guidance": 8.0, "threshold": 0.7,
            "warmup": 1, "cooldown": -1, "mask_mode": "intersect", "source_mode": "diffusers"}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
        "13": {"class_type": "FMCGMQwen3VLLoader", "inputs": {
            "model": "tiny-qwen3vl-dense", "dtype": "fp32", "attention": "sdpa", "device": "cpu",
            "keep_loaded": False, "max_image_tokens": 64}},
        "14": _evaluate(["12", 0], vlm=["13", 0]),
        "15": {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["14", 0]}},
        "16": {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["14", 1]}},
    })
    _, outputs = node_setup.run_prompt(prompt)
    vlm_eff, lpips_value = _capture(outputs, "15")[0], _capture(outputs, "16")[0]
    assert math.isnan(vlm_eff) or 0.0 <= vlm_eff <= 1.0
    assert lpips_value > 0 and math.isfinite(lpips_value)  # CSG changed the picture
    report = outputs["14"]["text"][0]
    assert "do(weather = sunny)" in report and "tiny-qwen3vl" in report.lower()
    assert "image 0: VLM-Eff" in report


def test_node_without_vlm_or_weights_and_batch_mismatch_named(node_setup):
    prompt = _counterfactual_nodes()
    prompt["9"] = {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}
    prompt["14"] = _evaluate(["9", 0], lpips_weights="(none: skip LPIPS)")
    prompt["15"] = {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["14", 0]}}
    _, outputs = node_setup.run_prompt(prompt)
    assert math.isnan(_capture(outputs, "15")[0])
    assert "VLM-Eff skipped" in outputs["14"]["text"][0] and "LPIPS skipped" in outputs["14"]["text"][0]

    prompt["9"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 2}}
    prompt["14"] = _evaluate(["9", 0], lpips_weights=node_module().AUTO_LPIPS)  # auto finds the file in models/lpips
    with pytest.raises(PromptError) as error:
        node_setup.run_prompt(prompt)
    assert "edited: 2 edited image(s) for 1 counterfactual(s)" in str(error.value.details)


def test_weights_combo_never_fails_and_auto_explains_a_missing_file(node_setup, monkeypatch, tmp_path):
    import folder_paths
    ev = node_module()

    def unreadable(name):
        raise OSError("no such folder")

    monkeypatch.setattr(folder_paths, "get_filename_list", unreadable)
    assert ev.lpips_weight_options() == [ev.AUTO_LPIPS, ev.NO_LPIPS]
    monkeypatch.setattr(folder_paths, "get_folder_paths", lambda name: [str(tmp_path / "lpips")])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(LPIPSWeightsError) as error:
        ev._lpips_weights_path(ev.AUTO_LPIPS)
    assert VGG16_URL in str(error.value) and str(tmp_path / "lpips") in str(error.value)
    assert str(tmp_path / "hub" / "checkpoints") in str(error.value)
