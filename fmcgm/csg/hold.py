"""Holding regions of a picture on its reconstruction while the rest is edited.

A ``Hold`` keeps the latent cells inside a mask on the unedited reconstruction's path: at every
step the guided x0-prediction inside the mask is replaced by the reconstruction's prediction at
that step (``reconstruction_predictions``). Given the predictions, the inversion's solvers act cell
by cell (the stored noise included), so held cells that start on the reconstruction stay on it,
step after step, while the UNet still sees the whole latent: the edited cells are rendered with the
held ones as their context. This is how the self-checking edit (``fmcgm.csg.self_check``) protects a
non-descendant that an earlier round changed; unlike CSG's protect masks (``guidance.protect_factor``),
which only take guidance away, a hold also stops changes that reach a region through the
UNet's global context.

Masks are latent-sized ([K, 1, h, w], one per counterfactual, values in [0, 1]); ``latent_mask``
makes one from a picture-sized boolean region without holding any cell that touches a pixel outside
it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import CSGInputError


@dataclass(frozen=True, eq=False)
class Hold:
    masks: torch.Tensor            # [K, 1, h, w]: 1 = keep counterfactual k's cell on the reconstruction
    reference: dict                # step index -> reconstruction's x0-prediction [B, C, h, w]

    def rows(self, counterfactuals, batch: int) -> "Hold":
        """The hold of some counterfactuals (indices), one mask row per image of each."""
        idx = torch.tensor(list(counterfactuals), dtype=torch.long)
        return Hold(self.masks[idx].repeat_interleave(batch, 0), self.reference)

    def apply(self, D: torch.Tensor, step: int) -> torch.Tensor:
        ref = self.reference.get(step)
        if ref is None:
            raise CSGInputError("hold", f"has no reconstruction prediction for step {step}; make it from the "
                                        "same inversion (reconstruction_predictions)")
        ref = ref.to(D.device, D.dtype)
        if D.shape[0] != ref.shape[0]:
            ref = ref.repeat(D.shape[0] // ref.shape[0], 1, 1, 1)
        m = self.masks.to(D.device, D.dtype)
        if m.shape[0] != D.shape[0] or m.shape[-2:] != D.shape[-2:]:
            raise CSGInputError("hold", f"masks of shape {tuple(m.shape)} do not fit {tuple(D.shape)} latent rows")
        return D + (ref - D) * m


def latent_mask(region: np.ndarray, latent_hw: tuple) -> torch.Tensor:
    """A picture-sized boolean region -> [1, 1, h, w] float mask of the latent cells whose every
    pixel lies in the region (a cell that shows anything outside it is never held)."""
    region = np.asarray(region, dtype=bool)
    h, w = latent_hw
    H, W = region.shape
    if H % h or W % w:
        raise CSGInputError("hold", f"a {W} x {H} region does not tile a {w} x {h} latent")
    cells = region.reshape(h, H // h, w, W // w).all(axis=(1, 3))
    return torch.from_numpy(cells.astype(np.float32))[None, None]
