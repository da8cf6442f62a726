"""FM-CGM: causal concept graphs from a VLM, interventions, and Causal Semantic Guidance.

The pack's library; the ComfyUI adapters live in the pack's ``nodes/`` folder. Most of it
imports no ComfyUI: the causal graph, the VLM backends, prompts and answer repair, the
manipulator, the graph drawing, the miniature world's scenes and oracle, and the CSG maths
(``csg.schedule``, ``masks``, ``guidance``, ``preview``, ``causal_edits``). What runs on
ComfyUI's own objects imports ComfyUI and needs it importable (``fmcgm.runner.lanes`` or a
running ComfyUI): ``csg.inversion``, ``csg.sampler``, ``csg.progress``, ``csg.self_check``, the
miniature world's model, the tiny stand-in models built from ComfyUI's classes (``tiny.sdxl``,
``tiny.comfy_qwen3vl``) and the headless runner's in-process session (``fmcgm.runner``, the one
place that loads it).
Submodules import heavy libraries lazily so that ``import fmcgm`` stays cheap.
"""

__version__ = "0.1.0"
