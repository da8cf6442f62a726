"""ComfyUI's own Qwen3-VL as the pack's VLM (fmcgm/vlm/comfy_qwen_backend.py, node FMCGMComfyQwen3VL).

On ComfyUI 0.33+: a tiny Qwen3-VL built with ComfyUI's classes (fmcgm/tiny/comfy_qwen3vl.py)
sits in models/text_encoders and comes out of the stock Load CLIP; the three VLM stages run through
the real executor; the decode loop gives the transformers backend's tokens on the same weights;
Cancel, progress and the memory manager behave as for the other local backend. On 0.3.75 the node
is listed and says which ComfyUI it needs. (The shipped workflow variant runs over HTTP and from
the real frontend in tests/test_workflow_frontend.py.)
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.comfy_harness import PromptError, cached_output, comfy_version
from tests.test_vlm_runtime import cancel_while_generating, extract_then_offload_unless_kept, loaded

TINY_FILE = "qwen3vl_tiny_fmcgm.safetensors"
native = pytest.mark.skipif(comfy_version() < (0, 33), reason="ComfyUI < 0.33 has no native Qwen3-VL")


@pytest.fixture(scope="module")
def tiny_te(comfy, comfy_dirs):
    import folder_paths
    from fmcgm.tiny import comfy_qwen3vl as tiny_comfy_qwen3vl
    folder = comfy_dirs["models"] / "text_encoders"
    folder_paths.add_model_folder_path("text_encoders", str(folder), is_default=True)
    path = folder / TINY_FILE
    if not path.exists():
        tiny_comfy_qwen3vl.save(path, seed=0)
    return path


@pytest.fixture(scope="module")
def clip(tiny_te):
    """The tiny encoder as the stock Load CLIP gives it (one per module: each load builds the grammar
    compiler's tokenizer info again)."""
    import comfy.sd
    return comfy.sd.load_clip([str(tiny_te)])


@pytest.fixture(scope="module")
def hf_dir(tiny_te, tmp_path_factory):
    """The same weights as a transformers folder (fmcgm/tiny/comfy_qwen3vl.hf_folder)."""
    from fmcgm.tiny import comfy_qwen3vl as tiny_comfy_qwen3vl
    return tiny_comfy_qwen3vl.hf_folder(tiny_te, tmp_path_factory.mktemp("tiny-comfy-qwen3vl-hf"))


@pytest.fixture(scope="module")
def backends(clip, hf_dir):
    """{"comfy": this backend on the CLIP, "transformers": the transformers backend on the same weights}."""
    from fmcgm.vlm.comfy_qwen_backend import ComfyQwen3VLBackend
    from fmcgm.vlm.transformers_backend import TransformersBackend
    return {"comfy": ComfyQwen3VLBackend(clip, max_image_tokens=64),
            "transformers": TransformersBackend(str(hf_dir), device="cpu", dtype="fp32", max_image_tokens=64)}


def picture(width: int = 64, height: int = 64):
    from PIL import Image
    return Image.fromarray((np.random.default_rng(0).random((height, width, 3)) * 255).astype("uint8"))


def node_vlm(clip, keep_loaded: bool = False):
    import nodes
    with torch.inference_mode():
        return nodes.NODE_CLASS_MAPPINGS["FMCGMComfyQwen3VL"].execute(
            clip=clip, keep_loaded=keep_loaded, max_image_tokens=64).args[0]


@native
def test_three_stages_give_schema_valid_answers_through_the_executor(tiny_te):
    import jsonschema
    from tests.comfy_harness import run_prompt
    prompt = {
        "1": {"class_type": "CLIPLoader", "inputs": {"clip_name": TINY_FILE, "type": "stable_diffusion"}},
        "2": {"class_type": "FMCGMComfyQwen3VL", "inputs": {"clip": ["1", 0], "keep_loaded": False,
                                                            "max_image_tokens": 64}},
        "3": {"class_type": "FMCGMTest_RecordingVLM", "inputs": {"vlm": ["2", 0]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "fmcgm_test.png"}},
        "5": {"class_type": "FMCGMConceptExtractor", "inputs": {
            "vlm": ["3", 0], "image": ["4", 0], "temperature": 0.0, "max_new_tokens": 2048, "max_concepts": 2,
            "seed": 0, "enable_thinking": False}},
        "6": {"class_type": "FMCGMConceptManipulator", "inputs": {
            "causal_graph": ["5", 0], "mode": "automatic", "concept": "", "value": "", "descendant_values": "",
            "num_interventions": 1, "temperature": 0.0, "max_new_tokens": 2048, "seed": 0, "enable_thinking": False,
            "vlm": ["3", 0], "image": ["4", 0]}},
        "7": {"class_type": "FMCGMEvaluateCounterfactual", "inputs": {
            "original": ["4", 0], "edited": ["4", 0], "counterfactual": ["6", 0],
            "lpips_weights": "(none: skip LPIPS)", "check_invariance": True, "temperature": 0.0,
            "max_new_tokens": 256, "seed": 0, "vlm": ["3", 0]}},
        "8": {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["7", 0]}},
        "9": {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["5", 3]}},
    }
    executor, outputs = run_prompt(prompt)
    exchanges = cached_output(executor, "3").outputs[0][0].exchanges
    schemas = [schema for schema, _ in exchanges]
    assert len(exchanges) >= 4 and all(schema is not None for schema in schemas)
    # Extraction (description, concepts, edges), the proposal, the verdicts: each complete and schema-valid
    # (the budget lets the random weights finish every answer; only the grammar can end them).
    for schema, answer in exchanges:
        jsonschema.validate(json.loads(answer), schema)
    assert json.loads(outputs["9"]["fmcgm_capture"][0])[0].startswith("VLM: ComfyUI Qwen3-VL")
    score = json.loads(outputs["8"]["fmcgm_capture"][0])[0]
    assert score is None or np.isnan(score) or 0.0 <= score <= 1.0


@native
def test_decode_loop_gives_the_transformers_backends_tokens_on_the_same_weights(backends):
    """The same file in transformers (fmcgm/tiny/comfy_qwen3vl.hf_folder): greedy answers agree
    token for token, picture or not, constrained or not, reasoning or not."""
    from fmcgm.vlm.base import ChatMessage, GenerationRequest
    ours, reference = backends["comfy"], backends["transformers"]
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "count": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["name", "count"], "additionalProperties": False}
    # 256 x 256 px is 64 visual tokens for both (their resize rules differ for other sizes).
    for images, json_schema, thinking in [([picture(256, 256)], schema, False), ([], None, True)]:
        request = GenerationRequest([ChatMessage("system", "You read pictures."),
                                     ChatMessage("user", "What is (in) this picture?", images)],
                                    json_schema=json_schema, temperature=0.0, max_new_tokens=24,
                                    enable_thinking=thinking)
        with torch.inference_mode():
            answer = ours.generate(request)
        assert answer == reference.generate(request)
        assert ours.last_stats.prompt_tokens == reference.last_stats.prompt_tokens
        assert answer.startswith("<think>\n") is thinking
    assert ours.last_stats.reasoning_tokens == reference.last_stats.reasoning_tokens > 0


@native
@pytest.mark.parametrize("keep_loaded", [False, True])
def test_memory_manager_loads_the_encoder_and_offloads_it_unless_kept(clip, keep_loaded):
    vlm = node_vlm(clip, keep_loaded)
    assert vlm.patcher is clip.patcher  # the CLIP's own weights: nothing copied
    extract_then_offload_unless_kept(vlm, keep_loaded)


@native
def test_cancel_stops_generation_within_a_token(clip):
    vlm = node_vlm(clip)
    assert cancel_while_generating(vlm, at_token=5) == [1, 2, 3, 4, 5]  # one call per token, not one more
    assert not loaded(vlm)  # offloaded on the way out


@native
def test_a_clip_without_qwen3vl_is_refused_with_what_to_load(comfy):
    from fmcgm.vlm.base import VLMError
    from fmcgm.vlm.comfy_qwen_backend import ComfyQwen3VLBackend
    from tests.fixtures import tiny_sdxl
    _, sdxl_clip, _ = tiny_sdxl.build(0)
    with pytest.raises(VLMError, match="not a Qwen3-VL") as error:
        ComfyQwen3VLBackend(sdxl_clip)
    assert "Load CLIP" in str(error.value) and "SDXLClipModel" in str(error.value)


@native
def test_speed_and_memory_benchmark_runs(backends, capsys):
    """A smoke run of benchmarks/bench_comfy_qwen.py's measurements (one stage, one round, no memory
    processes): both backends decode the same number of tokens with and without the schema; the
    real sizes are counted. Figures not asserted."""
    import argparse
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_comfy_qwen.py"
    spec = importlib.util.spec_from_file_location("bench_comfy_qwen", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from PIL import Image
    speed = bench.measure_speed(backends, ["edges"], rounds=1, tokens=4, image=Image.new("RGB", (256, 256)))
    sizes = bench.real_sizes()
    bench.print_report(backends, argparse.Namespace(rounds=1, tokens=4, memory_rounds=0), speed, None, sizes)
    runs = speed["edges"]["rounds"]
    assert sorted(runs) == ["comfy constrained", "comfy plain", "transformers constrained", "transformers plain"]
    assert len({run[0]["tokens"] for run in runs.values()}) == 1
    assert [run[0]["constrained"] for run in runs.values()] == [True, False, True, False]
    assert sizes["qwen3vl_8b"] > 8e9 and "16.3 GiB once" in capsys.readouterr().out


@pytest.mark.skipif(comfy_version() >= (0, 33), reason="this ComfyUI has native Qwen3-VL")
def test_on_an_older_comfyui_the_node_is_listed_and_names_the_version_it_needs(comfy):
    import nodes
    from tests.comfy_harness import run_prompt
    assert "FMCGMComfyQwen3VL" in nodes.NODE_CLASS_MAPPINGS
    prompt = {
        "1": {"class_type": "FMCGMTest_TinySDXLCheckpointLoader", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}},
        "2": {"class_type": "FMCGMComfyQwen3VL", "inputs": {"clip": ["1", 1], "keep_loaded": False,
                                                            "max_image_tokens": 64}},
        "3": {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["2", 0]}},
    }
    with pytest.raises(PromptError) as error:
        run_prompt(prompt)
    message = str(error.value)
    assert "needs ComfyUI 0.33.0 or later; this ComfyUI is 0.3.75" in message
    assert "Load Qwen3-VL (FM-CGM)" in message  # and what works here instead
