"""A miniature causal world, small enough to train a tiny SDXL on here, with ground truth in pixels.

- ``world``   the structural causal model (concepts, mechanisms, exogenous noise), scenes,
              captions, counterfactuals, and the world's causal graph as the pack's graph JSON
- ``render``  draws a scene, and says which pixels show which concept
- ``oracle``  reads each concept's value off a picture by region (no learned judge)

Importable without ComfyUI; the model, training and editing modules import it lazily.
"""
