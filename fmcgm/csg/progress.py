"""Progress bar and live previews while inverting and editing, as KSampler shows them.

``latent_preview.prepare_callback`` is what ComfyUI's KSampler uses: a ``comfy.utils.ProgressBar``
whose updates carry a preview picture of the current x0 estimate (with the preview method the
user chose: latent2rgb, TAESD, or none), sent to the frontend by the server's progress hook.
"""
from __future__ import annotations

import latent_preview


class Progress:
    """One progress bar over ``total`` steps, shared by the sampling runs of one node (an edit of
    several counterfactual groups runs one after another). ``callback(first_step)`` gives a
    KSampler-style callback ``(step, x0, x, total_steps)`` for a run that starts at ``first_step``;
    ``extra`` (same signature, absolute steps) is called after each update."""

    def __init__(self, model, total: int, extra=None):
        self.total = int(total)
        self.extra = extra
        self._update = latent_preview.prepare_callback(model, self.total)

    def callback(self, first_step: int = 0):
        def run_callback(step, x0, x, total_steps):
            self._update(first_step + step, x0, x, self.total)
            if self.extra is not None:
                self.extra(first_step + step, x0, x, self.total)
        return run_callback
