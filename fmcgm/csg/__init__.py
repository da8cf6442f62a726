"""Causal Semantic Guidance (FM-CGM paper, Sec. 5.3 and 6) on ComfyUI's own objects.

LEDITS++-style editing with one edit concept per changed concept (the intervened concept
first, then its changed descendants), on top of an edit-friendly DPM-Solver++(2M) SDE
inversion. Modules:

- ``schedule``      leading timestep schedules, ``skip`` and sigma tables (diffusers-compatible)
- ``masks``         cross-attention (M1) and noise-estimate (M2) masks
- ``guidance``      edit concepts, counterfactual edits, batch plans and the CSG combination
- ``preview``       masks and mask previews as ComfyUI MASK / IMAGE tensors
- ``causal_edits``  the Concept Manipulator's counterfactuals as edit concepts
- ``attention``     cross-attention capture through ``attn2`` replacements (chained)
- ``inversion``     DPM-Solver++ 2M SDE / edit-friendly DDPM inversion (stored noise maps), DDIM inversion
- ``sampler``       the CSG guider, the stored-noise sampler, the edit and regeneration loops
- ``progress``      KSampler's progress bar with live previews
- ``models``        model checks (supported types, identity) and the zero unconditional
- ``hold``          latent cells held on the reconstruction (an invariant the judge saw change)
- ``self_check``    the self-checking edit: render, let a judge read it, retry where it failed
- ``errors``        the errors CSG raises (a user's input named in the message)

The first five import no ComfyUI (the pure maths is usable and testable on its own), nor do
``hold`` and ``errors``; ``inversion``, ``sampler`` and ``progress`` import it at the top (and
``self_check`` through them), ``attention`` and ``models`` where they touch it.
"""

from .errors import CSGError, CSGInputError

__all__ = ["CSGError", "CSGInputError"]
