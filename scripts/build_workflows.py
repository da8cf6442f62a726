#!/usr/bin/env python3
"""Generate the example workflows in workflows/ (ComfyUI UI format) from their definitions.

Each workflow is defined once here as an API-format graph, then laid out as a UI workflow
with the live /object_info of a real ComfyUI with this pack loaded, so widget order and
socket types always match the node schemas. tests/test_workflows.py checks the shipped
files equal what this script writes, and runs each one on tiny models.

Usage: python scripts/build_workflows.py   (after `make setup`)
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
SDXL = "sd_xl_base_1.0.safetensors"
QWEN = "Qwen3-VL-8B-Instruct"
MODELS = [{"name": SDXL, "directory": "checkpoints",
           "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors"}]


def _node(kind: str, title: str | None = None, **inputs) -> dict:
    entry = {"class_type": kind, "inputs": inputs}
    if title:
        entry["_meta"] = {"title": title}
    return entry


def _picture_and_models(vlm: str = "local") -> dict:
    """Nodes 1-4: checkpoint, picture, its latent, the VLM."""
    graph = {
        "1": _node("CheckpointLoaderSimple", ckpt_name=SDXL),
        "2": _node("LoadImage", "Picture to edit", image="example.png"),
        "3": _node("VAEEncode", pixels=["2", 0], vae=["1", 2]),
    }
    if vlm == "local":
        graph["4"] = _node("FMCGMQwen3VLLoader", model=QWEN, dtype="auto", attention="auto", device="auto",
                           keep_loaded=False, max_image_tokens=1280)
    else:
        graph["4"] = _node("FMCGMOpenAIVLM", base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen3-VL-8B-Instruct",
                           api_key_env="", timeout=300.0, retries=2)
    return graph


def _extract(graph: dict) -> None:
    """Nodes 5-6: the Concept Extractor and its graph drawing."""
    graph["5"] = _node("FMCGMConceptExtractor", vlm=["4", 0], image=["2", 0], caption="", temperature=0.1,
                       max_new_tokens=2048, max_concepts=8, seed=0, enable_thinking=False)
    graph["6"] = _node("FMCGMCausalGraphViewer", "Causal graph", graph=["5", 0], width=1024, height=1024,
                       intervene_concept="", intervene_value="")


def _csg(graph: dict, counterfactual: list, first_id: int, label: str) -> None:
    """Inversion (shared), CSG edits from the counterfactual(s), the sampler, decode and save."""
    ids = [str(first_id + i) for i in range(6)]
    inv, edits, sampler, decode, save, masks = ids
    graph[inv] = _node("FMCGMDPMSolverInversion", model=["1", 0], latent=["3", 0], steps=100, skip=0.15, seed=0,
                       source_scale=3.5, zero_noise_steps=3, timesteps_per_call=1, sigma_table="model")
    graph[edits] = _node("FMCGMCSGEditsFromCounterfactual", clip=["1", 1], counterfactual=counterfactual,
                         edit_guidance=8.0, threshold=0.7, warmup=10, cooldown=-1, include_intervened=True,
                         attention_tokens="prompt")
    graph[sampler] = _node("FMCGMCSGSampler", model=["1", 0], inversion=[inv, 0], edits=[edits, 0],
                           edit_guidance=8.0, threshold=0.7, warmup=10, cooldown=-1, mask_mode="intersect",
                           source_mode="diffusers")
    graph[decode] = _node("VAEDecode", samples=[sampler, 0], vae=["1", 2])
    graph[save] = _node("SaveImage", f"Counterfactual ({label})", images=[decode, 0], filename_prefix=f"fmcgm/{label}")
    graph[masks] = _node("PreviewImage", "Where each concept acted", images=[sampler, 2])


def _manipulate_and_render(graph: dict, causal_graph: list, label: str, *, mode: str, concept="", value="",
                           descendant_values: str = "", with_vlm: bool = True) -> None:
    """Node 8 the Concept Manipulator, node 9 the counterfactual drawing, then CSG (nodes 10-15)."""
    vlm = {"vlm": ["4", 0], "image": ["2", 0]} if with_vlm else {}
    graph["8"] = _node("FMCGMConceptManipulator", causal_graph=causal_graph, mode=mode, concept=concept,
                       value=value, descendant_values=descendant_values, num_interventions=3, temperature=0.2,
                       max_new_tokens=3072, seed=0, enable_thinking=False, **vlm)
    graph["9"] = _node("FMCGMCausalGraphViewer", "Counterfactual graph", counterfactual=["8", 0], width=1024,
                       height=1024, intervene_concept="", intervene_value="")
    _csg(graph, ["8", 0], 10, label)


def causal_edit(vlm: str = "local") -> dict:
    """The main job: extract, pick an intervention in the editor, propagate, render with CSG."""
    graph = _picture_and_models(vlm)
    _extract(graph)
    graph["7"] = _node("FMCGMCausalGraphEditor", "Edit the graph, pick do(concept = value)", graph=["5", 0],
                       graph_json="", intervene_concept="weather", intervene_value="sunny", edit_base="")
    _manipulate_and_render(graph, ["7", 0], "csg", mode="manual", concept=["7", 1], value=["7", 2])
    return graph


def automatic_interventions() -> dict:
    """The VLM proposes three interventions on different concepts; CSG edits all three as a batch."""
    graph = _picture_and_models()
    _extract(graph)
    _manipulate_and_render(graph, ["5", 0], "auto", mode="automatic")
    return graph


def baselines() -> dict:
    """CSG beside the paper's baselines (DDIM and DDPM inversion regenerated with the full prompt),
    each scored with VLM-Eff and LPIPS."""
    graph = causal_edit()
    graph["20"] = _node("CLIPTextEncode", "Full counterfactual prompt", clip=["1", 1], text=["8", 1])
    for first, kind, label in ((21, "FMCGMDDIMInversion", "ddim"), (25, "FMCGMDDPMInversion", "ddpm")):
        inv, regen, decode, save = (str(first + i) for i in range(4))
        params = dict(steps=100, skip=0.15, source_scale=1.0)
        if label == "ddpm":  # DDIM inversion is deterministic: no seed, no noise maps
            params.update(seed=0, source_scale=3.5, zero_noise_steps=0)
        graph[inv] = _node(kind, model=["1", 0], latent=["3", 0], **params)
        graph[regen] = _node("FMCGMRegenerateFromInversion", model=["1", 0], inversion=[inv, 0],
                             positive=["20", 0], cfg=7.5)
        graph[decode] = _node("VAEDecode", samples=[regen, 0], vae=["1", 2])
        graph[save] = _node("SaveImage", f"Baseline ({label.upper()} inversion)", images=[decode, 0],
                            filename_prefix=f"fmcgm/{label}")
    # The paper's Table 1 metrics for each method: VLM-Eff (effectiveness) and LPIPS (minimality).
    for evaluator, (decoded, label) in zip(("30", "31", "32"), (("13", "CSG"), ("23", "DDIM"), ("27", "DDPM"))):
        graph[evaluator] = _node("FMCGMEvaluateCounterfactual", f"Evaluate {label}", original=["2", 0],
                                 edited=[decoded, 0], counterfactual=["8", 0],
                                 lpips_weights="auto: vgg16-397923af.pth (models/lpips or torch hub cache)",
                                 check_invariance=True, temperature=0.1, max_new_tokens=1024, seed=0, vlm=["4", 0])
    return graph


def graph_only() -> dict:
    """No VLM: type the graph as JSON in the editor and the descendants' values by hand."""
    example = {"description": "a woman with wet hair standing in the rain",
               "concepts": [{"name": "weather", "value": "rainy"}, {"name": "hair", "value": "wet"},
                            {"name": "umbrella", "value": "open"}, {"name": "age", "value": "young adult"}],
               "edges": [{"cause": "weather", "effect": "hair"}, {"cause": "weather", "effect": "umbrella"}]}
    graph = {k: v for k, v in _picture_and_models().items() if k != "4"}
    graph["7"] = _node("FMCGMCausalGraphEditor", "Type or edit the causal graph", graph_json=json.dumps(example, indent=2),
                       intervene_concept="weather", intervene_value="sunny", edit_base="")
    _manipulate_and_render(graph, ["7", 0], "graph_only", mode="graph-only", concept=["7", 1], value=["7", 2],
                           descendant_values="hair: dry\numbrella: closed", with_vlm=False)
    return graph


DEFINITIONS = {
    "fmcgm_causal_edit": causal_edit,
    "fmcgm_causal_edit_openai_server": lambda: causal_edit(vlm="openai"),
    "fmcgm_automatic_interventions": automatic_interventions,
    "fmcgm_csg_vs_baselines": baselines,
    "fmcgm_graph_only_no_vlm": graph_only,
}


def render_all(object_info: dict) -> dict[str, str]:
    """{file name: JSON text} for every definition."""
    sys.path.insert(0, str(REPO))
    from fmcgm.workflow_format import api_to_ui
    files = {}
    for name, build in DEFINITIONS.items():
        workflow = api_to_ui(build(), object_info)
        for node in workflow["nodes"]:
            if node["type"] == "CheckpointLoaderSimple":  # lets the frontend offer the download
                node["properties"]["models"] = MODELS
        files[f"{name}.json"] = json.dumps(workflow, indent=2) + "\n"
    return files


def main() -> None:
    sys.path.append(str(REPO))
    from tests.comfy_harness import ComfyServer
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(Path(tmp)).start()
        try:
            object_info = server.get_json("/object_info")
        finally:
            server.stop()
    WORKFLOWS.mkdir(exist_ok=True)
    for name, text in render_all(object_info).items():
        (WORKFLOWS / name).write_text(text)
        print(f"wrote workflows/{name}")


if __name__ == "__main__":
    main()
