"""A miniature causal world, small enough to train a tiny SDXL on here, with ground truth in pixels.

- ``world``   the structural causal model (concepts, mechanisms, exogenous noise), scenes,
              captions, counterfactuals, and the world's causal graph as the pack's graph JSON
- ``paint``   draws a scene, and says which pixels show which concept
- ``oracle``  reads each concept's value off a picture by region (no learned judge)
- ``judge``   the oracle as a judge of the self-checking edit
- ``model``, ``train``, ``pipeline``  the tiny SDXL, its training, and the paper's Table 1 on it
- ``panels``  labelled pictures side by side (the demo's and the README's figures)
- ``scm``, ``world2``, ``paint2``, ``oracle2``, ``pipeline2``, ``train2``  the second world (local
  causes and effects, unnamed detail), the same parts over a general causal-world class

Importable without ComfyUI; the model, training and editing modules import it lazily.
"""
