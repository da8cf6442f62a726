"""FM-CGM: causal concept graphs from a VLM, interventions, and Causal Semantic Guidance.

This package holds everything that does not need ComfyUI: the causal graph, the VLM
backends and prompts, the manipulator, the inversion and guidance maths. ComfyUI adapters
live in the pack's ``nodes/`` folder. Submodules import heavy libraries lazily so that
``import fmcgm`` stays cheap.
"""

__version__ = "0.1.0"
