"""The pack's own socket types, declared once so every node file agrees on them.

What travels on each socket (plain Python objects from ``fmcgm``):
- CAUSAL_GRAPH: ``list[fmcgm.graph.CausalGraph]``, one per image of the batch.
- CAUSAL_COUNTERFACTUAL: ``list[fmcgm.manipulator.Counterfactual]``, one per edit (the
  automatic mode gives several for one image).
- FMCGM_VLM: a ``fmcgm.vlm.base.VLMBackend`` (wrapped for ComfyUI memory management).
- FMCGM_INVERSION: the stored result of an inversion (``fmcgm.csg.inversion.Inversion``).
- FMCGM_EDITS: CSG edit concepts grouped by counterfactual (``fmcgm.csg.guidance.EditSet``).
- FMCGM_JUDGE: reads a rendered counterfactual (``fmcgm.judges.Judge``).
"""
from ._api import io

CausalGraphSocket = io.Custom("CAUSAL_GRAPH")
CounterfactualSocket = io.Custom("CAUSAL_COUNTERFACTUAL")
VLMSocket = io.Custom("FMCGM_VLM")
InversionSocket = io.Custom("FMCGM_INVERSION")
EditsSocket = io.Custom("FMCGM_EDITS")
JudgeSocket = io.Custom("FMCGM_JUDGE")  # a fmcgm.judges.Judge (VLM-Eff, the miniature world's oracle, ...)
