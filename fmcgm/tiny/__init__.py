"""Small stand-ins for a user's models and pictures, built offline from a seed.

The demo, the training script, the benchmarks and the tests run on these: ``sdxl`` (a tiny
SDXL from ComfyUI's own classes), ``qwen3vl`` (tiny Qwen3-VL folders, with ``qwen_vocab`` for
Qwen's real tokenizer), ``comfy_qwen3vl`` (a tiny Qwen3-VL text encoder from ComfyUI's own
classes, 0.33+), ``vgg16`` (LPIPS's backbone), ``openai_server`` (an OpenAI-compatible
server for a local model, with scripted failures), ``diffusers_ref`` (the tiny SDXL inside
diffusers, for parity), ``pictures`` (a picture with structure) and ``models`` (all of them
under the names the shipped workflows use). Nothing here is used by the nodes. ``sdxl`` and
``comfy_qwen3vl`` import ComfyUI at the top (``fmcgm.runner.lanes.import_lane_comfy()`` first);
the others do not.
"""
