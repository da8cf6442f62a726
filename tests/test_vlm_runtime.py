"""The VLM inside ComfyUI: memory management, progress and cancellation (nodes/_vlm_runtime.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def loader(comfy, comfy_dirs):
    import nodes
    from tests.fixtures.tiny_qwen3vl import build_tiny_qwen3vl
    folder = comfy_dirs["models"] / "LLM" / "tiny-qwen3vl-dense"
    if not (folder / "config.json").exists():
        build_tiny_qwen3vl(folder, variant="dense", seed=0)
    node = nodes.NODE_CLASS_MAPPINGS["FMCGMQwen3VLLoader"]

    def load(keep_loaded: bool):
        with torch.inference_mode():
            return node.execute(model="tiny-qwen3vl-dense", dtype="fp32", attention="sdpa", device="cpu",
                                keep_loaded=keep_loaded, max_image_tokens=64).args[0]
    return load


def picture():
    from PIL import Image
    return Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))


def loaded(vlm) -> bool:
    """Whether ComfyUI's memory manager holds the VLM's patcher."""
    import comfy.model_management as mm
    return any(entry.model is vlm.patcher for entry in mm.current_loaded_models)


@pytest.mark.parametrize("keep_loaded", [False, True])
def test_comfy_memory_manager_loads_the_vlm_and_offloads_it_unless_kept(loader, keep_loaded):
    vlm = loader(keep_loaded)
    assert not loaded(vlm)
    extract_then_offload_unless_kept(vlm, keep_loaded)


def extract_then_offload_unless_kept(vlm, keep_loaded: bool) -> None:
    """A graph is read; the memory manager holds the VLM afterwards only if kept, until offloaded.
    (Also used for ComfyUI's own Qwen3-VL.)"""
    from fmcgm.extraction import extract_graph
    with torch.inference_mode():
        result = extract_graph(vlm, picture(), temperature=0.0, max_new_tokens=64, max_concepts=3)
    assert result.graph.concepts
    assert loaded(vlm) is keep_loaded
    if keep_loaded:
        vlm.offload()
        assert not loaded(vlm)


def runtime_module():
    from tests.comfy_harness import pack_module
    return pack_module("nodes._vlm_runtime")


def test_cancel_stops_generation_within_a_token(loader):
    vlm = loader(False)
    assert cancel_while_generating(vlm, at_token=5) == [1, 2, 3, 4, 5]  # one call per token, not one more
    assert not loaded(vlm)  # and the model was offloaded on the way out


def cancel_while_generating(vlm, at_token: int) -> list[int]:
    """Extract a graph through the node's progress callback, pressing Cancel at token ``at_token``;
    the token counts the callback saw. (Also used for ComfyUI's own Qwen3-VL.)"""
    import comfy.model_management as mm
    from fmcgm.extraction import extract_graph
    progress = runtime_module().progress_callback()
    seen = []

    def on_token(done, total):
        seen.append(done)
        if len(seen) == at_token:  # the user presses Cancel while the VLM is generating
            mm.interrupt_current_processing(True)
        progress(done, total)

    try:
        with pytest.raises(mm.InterruptProcessingException), torch.inference_mode():
            extract_graph(vlm, picture(), temperature=0.0, max_new_tokens=64, max_concepts=3, on_token=on_token)
    finally:
        mm.interrupt_current_processing(False)
    return seen
