"""The pack's choices and defaults, each typed once: the nodes offer these option lists, the
library checks against them, and the workflow builder, the scripts and the tests read them here.
Nothing is imported: every node file can read this at ComfyUI's start for free.
"""
from __future__ import annotations

# ---- Causal Semantic Guidance (fmcgm.csg): the paper's settings (Sec. 6, as LEDITS++)
EDIT_GUIDANCE = 8.0  # s_e, the edit guidance scale of each concept
THRESHOLD = 0.7      # lambda, the mask quantile: 0.7 edits about the top 30 % of a concept's attention
SKIP = 0.15          # the fraction of the noisiest inversion steps left out

MASK_MODES = ("intersect", "cross_attn", "noise")      # M1 * M2 (the paper's), M1 only, M2 only
SOURCE_MODES = ("diffusers", "consistent")             # how the source prompt's CFG enters (fmcgm.csg.sampler)
BATCHING = ("auto", "together", "separately")          # counterfactuals in one UNet batch or one run each
SIGMA_TABLES = ("model", "diffusers")                  # whose noise levels the inversion schedules
ATTENTION_TOKENS = ("prompt", "all")                   # which tokens' cross-attention makes a concept's mask

# ---- the local VLM (fmcgm.vlm.transformers_backend, the Qwen3-VL Loader node)
VLM_DTYPES = ("auto", "bf16", "fp16", "fp32")
VLM_ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")

# ---- the Evaluate Counterfactual node's LPIPS choice that skips LPIPS (the evaluation job reads it too)
NO_LPIPS = "(none: skip LPIPS)"

# ---- the models the shipped workflows name (a user's own files; the pack never downloads)
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
QWEN_FOLDER = "Qwen3-VL-8B-Instruct"
QWEN_TEXT_ENCODER = "qwen3vl_8b_fp8_scaled.safetensors"  # Comfy-Org/Qwen3-VL, as ComfyUI's own templates name it
EXAMPLE_PICTURE = "example.png"  # ComfyUI ships input/example.png

# ---- the causal graph editor node, and the ui payload it sends its widget after a run (web/js reads it)
EDITOR_NODE = "FMCGMCausalGraphEditor"
EDITOR_UI_KEY = "fmcgm_graph_editor"
