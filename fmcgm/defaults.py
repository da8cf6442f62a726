"""Defaults that the nodes, the library, the workflow builder and the stand-ins share, in one place."""
from __future__ import annotations

# The models the shipped workflows name (a user's own files; the pack never downloads).
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
QWEN_FOLDER = "Qwen3-VL-8B-Instruct"
EXAMPLE_PICTURE = "example.png"  # ComfyUI ships input/example.png

# The causal graph editor node, and the ui payload it sends its widget after a run (web/js reads it).
EDITOR_NODE = "FMCGMCausalGraphEditor"
EDITOR_UI_KEY = "fmcgm_graph_editor"
