"""Concept Extractor and Manipulator nodes end to end in real ComfyUI on tiny Qwen3-VL folders."""
from __future__ import annotations

import json

import pytest

from tests.comfy_harness import PromptError


@pytest.fixture(scope="module")
def tiny_vlms(comfy, comfy_dirs):
    from tests.fixtures.tiny_qwen3vl import build_tiny_qwen3vl
    llm = comfy_dirs["models"] / "LLM"
    for variant in ("dense", "moe"):
        if not (llm / f"tiny-qwen3vl-{variant}" / "config.json").exists():
            build_tiny_qwen3vl(llm / f"tiny-qwen3vl-{variant}", variant=variant, seed=0)
    return llm


def captured(outputs: dict, node: str):
    return json.loads(outputs[node]["fmcgm_capture"][0])


def extraction_prompt(model: str, **manipulator) -> dict:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "fmcgm_test.png"}},
        "2": {"class_type": "FMCGMQwen3VLLoader", "inputs": {
            "model": model, "dtype": "fp32", "attention": "sdpa", "device": "cpu", "keep_loaded": False,
            "max_image_tokens": 64}},
        "3": {"class_type": "FMCGMConceptExtractor", "inputs": {
            "vlm": ["2", 0], "image": ["1", 0], "caption": "a red ball above a green bar", "temperature": 0.0,
            "max_new_tokens": 160, "max_concepts": 4, "seed": 0, "enable_thinking": False}},
        "4": {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["3", 0]}},
    }
    if manipulator:
        prompt["5"] = {"class_type": "FMCGMConceptManipulator", "inputs": {
            "causal_graph": ["3", 0], "vlm": ["2", 0], "image": ["1", 0], "concept": "", "value": "",
            "descendant_values": "", "num_interventions": 3, "temperature": 0.0, "max_new_tokens": 200,
            "seed": 0, "enable_thinking": False, **manipulator}}
        prompt["6"] = {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["5", 0]}}
    return prompt


@pytest.mark.parametrize("variant", ["dense", "moe"])
def test_extractor_and_automatic_manipulator_run_on_tiny_qwen3vl(comfy, tiny_vlms, variant):
    _, outputs = comfy.run_prompt(extraction_prompt(f"tiny-qwen3vl-{variant}", mode="automatic",
                                                    num_interventions=2))
    graphs = captured(outputs, "4")[0]
    assert len(graphs) == 1
    graph = graphs[0]
    # Random weights, but constrained decoding: the answer parses into a valid graph.
    assert 1 <= len(graph["concepts"]) <= 4
    names = {c["name"] for c in graph["concepts"]}
    assert all(e["cause"] in names and e["effect"] in names for e in graph["edges"])
    from fmcgm.graph import CausalGraph
    rebuilt = CausalGraph.from_dict(graph)  # strict parser: a DAG, no unknown names
    assert set(rebuilt.names) == names
    counterfactuals = captured(outputs, "6")[0]
    assert 1 <= len(counterfactuals) <= 2
    for cf in counterfactuals:
        factual = {c["name"]: c["value"] for c in graph["concepts"]}
        non_descendants = set(rebuilt.non_descendants(cf["concept"]))
        assert cf["concept"] in names and cf["value"] != factual[cf["concept"]]
        assert set(cf["descendant_values"]) == set(rebuilt.descendants(cf["concept"]))
        assert not non_descendants & set(cf["descendant_values"])
    assert len({cf["concept"] for cf in counterfactuals}) == len(counterfactuals)  # distinct concepts


def test_graph_only_mode_needs_no_vlm_and_keeps_non_descendants(comfy, tiny_vlms):
    _, outputs = comfy.run_prompt(extraction_prompt("tiny-qwen3vl-dense"))
    graph = captured(outputs, "4")[0][0]
    concept = graph["concepts"][0]["name"]
    prompt = extraction_prompt("tiny-qwen3vl-dense", mode="graph-only", concept=concept, value="purple")
    del prompt["5"]["inputs"]["vlm"]
    _, outputs = comfy.run_prompt(prompt)
    cf = captured(outputs, "6")[0][0]
    assert cf["concept"] == concept and cf["value"] == "purple"
    assert cf["edit_prompts"][0]["concept"] == concept


def test_bad_inputs_are_clear_errors_and_comfy_keeps_running(comfy, tiny_vlms):
    # A concept that does not exist: the error names it and lists the known ones.
    with pytest.raises(PromptError) as error:
        comfy.run_prompt(extraction_prompt("tiny-qwen3vl-dense", mode="graph-only", concept="no such concept",
                                           value="x"))
    assert "no such concept" in str(error.value)
    # Manual mode without a VLM.
    prompt = extraction_prompt("tiny-qwen3vl-dense", mode="manual", concept="x", value="y")
    del prompt["5"]["inputs"]["vlm"]
    with pytest.raises(PromptError) as error:
        comfy.run_prompt(prompt)
    assert "vlm" in str(error.value)
    # A model folder that does not exist: named, with the directories searched.
    with pytest.raises(PromptError) as error:
        comfy.run_prompt(extraction_prompt("missing-model"))
    assert "missing-model" in str(error.value) and "LLM" in str(error.value)
    # And afterwards a good prompt still runs.
    _, outputs = comfy.run_prompt(extraction_prompt("tiny-qwen3vl-dense"))
    assert captured(outputs, "4")[0]


def test_an_image_batch_gives_one_graph_per_image(comfy, tiny_vlms):
    prompt = extraction_prompt("tiny-qwen3vl-dense")
    prompt["10"] = {"class_type": "ImageFlip", "inputs": {"image": ["1", 0], "flip_method": "x-axis: vertically"}}
    prompt["11"] = {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["10", 0]}}
    prompt["3"]["inputs"]["image"] = ["11", 0]
    _, outputs = comfy.run_prompt(prompt)
    graphs = captured(outputs, "4")[0]
    assert len(graphs) == 2
    from fmcgm.graph import CausalGraph
    for graph in graphs:
        assert CausalGraph.from_dict(graph).concepts


def test_empty_image_batch_is_a_clear_error(comfy, tiny_vlms):
    import nodes
    import torch
    extractor = nodes.NODE_CLASS_MAPPINGS["FMCGMConceptExtractor"]
    with pytest.raises(ValueError, match="image: the image batch is empty"):
        extractor.execute(vlm=None, image=torch.zeros((0, 64, 64, 3)), temperature=0.1, max_new_tokens=16,
                          max_concepts=2, seed=0, enable_thinking=False)
