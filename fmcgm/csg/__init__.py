"""Causal Semantic Guidance (FM-CGM paper, Sec. 5.3 and 6) on ComfyUI's own objects.

LEDITS++-style editing with one edit concept per changed concept (the intervened concept
first, then its changed descendants), on top of an edit-friendly DPM-Solver++(2M) SDE
inversion. Modules:

- ``schedule``   leading timestep schedules, ``skip`` and sigma tables (diffusers-compatible)
- ``inversion``  DPM-Solver++ 2M SDE / edit-friendly DDPM inversion (stored noise maps), DDIM inversion
- ``attention``  cross-attention probability capture through ``attn2`` replacements (chained)
- ``masks``      cross-attention (M1) and noise-estimate (M2) masks
- ``guidance``   edit concepts, counterfactual batches and the CSG combination
- ``sampler``    the edit guider / stored-noise sampler and the edit and regeneration loops
- ``models``     model checks (supported types, identity) and the zero unconditional

Everything that touches ComfyUI imports it lazily, inside functions, so ``import fmcgm.csg``
works without ComfyUI on the path (the pure maths is usable and testable on its own).
"""

from .errors import CSGError, CSGInputError

__all__ = ["CSGError", "CSGInputError"]
