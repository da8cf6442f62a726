"""API-format prompts used by several tests (the same graphs a user builds in the UI)."""
from __future__ import annotations


def txt2img_roundtrip(ckpt: str, image: str, seed: int = 0, steps: int = 8, denoise: float = 0.6,
                      prefix: str = "fmcgm_test") -> dict:
    """Load -> encode a picture -> KSampler img2img -> decode -> save: stock SDXL nodes only."""
    return {
        "1": {"class_type": "FMCGMTest_TinySDXLCheckpointLoader", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red ball on a green bar"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0],
            "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "denoise": denoise}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }


def graph_only_edit(scene_node: str, scene_inputs: dict, concept: str, value: str) -> dict:
    """A miniature world's scene -> its mechanisms -> the Concept Manipulator in graph-only mode
    for do(concept = value), the counterfactuals captured by node 4."""
    return {
        "1": {"class_type": scene_node, "inputs": scene_inputs},
        "2": {"class_type": "FMCGMMiniworldMechanisms", "inputs": {"graph": ["1", 1], "concept": concept,
                                                                   "value": value}},
        "3": {"class_type": "FMCGMConceptManipulator", "inputs": {
            "causal_graph": ["1", 1], "mode": "graph-only", "concept": concept, "value": value,
            "descendant_values": ["2", 0], "num_interventions": 1, "temperature": 0.2, "max_new_tokens": 64,
            "seed": 0, "enable_thinking": False}},
        "4": {"class_type": "FMCGMTest_Capture", "inputs": {"value": ["3", 0]}},
    }
