"""What a CSG run looks like to a person: Where Each Concept Acted (the CSG Sampler's masks as a
picture a person can read) and Before / After (the original and the edits in one preview).

Adapters only: the masks' drawing (one panel per concept, its mask over the picture in its role's
colour, its phrase above) lives in ``fmcgm.csg.preview``.
"""
from __future__ import annotations

from ._api import CSG_CATEGORY, io, schema, ui
from ._types import EditsSocket


class ConceptMasksPicture(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMConceptMasksPicture",
            display_name="Where Each Concept Acted (FM-CGM)",
            category=CSG_CATEGORY,
            description="Shows where CSG edited each concept: for every counterfactual one picture with a panel per "
                        "concept, the edited picture in darkened grey and the concept's mask over it in the graph drawing's "
                        "colour for its role (intervened orange, descendant sky blue, protected grey), its phrase "
                        "and role above. The brighter the colour, the more steps that pixel was edited.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image", tooltip="The edited pictures (VAE Decode of the CSG Sampler's latent), one per "
                                                "counterfactual, or the original picture."),
                io.Mask.Input("concept_masks", tooltip="The CSG Sampler's concept_masks output (same run)."),
                EditsSocket.Input("edits", tooltip="The edits the CSG Sampler rendered (from CSG Edits From "
                                                   "Counterfactual or CSG Edit Concept): the names and roles."),
            ],
            outputs=[io.Image.Output(display_name="image",
                                     tooltip="One picture per counterfactual, a panel per concept.")],
        )

    @classmethod
    def execute(cls, image, concept_masks, edits):
        import numpy as np
        import torch
        from fmcgm.csg import preview
        if image is None or image.shape[0] == 0:
            raise ValueError("image: the image batch is empty; connect the decoded CSG result")
        columns = preview.mask_columns(edits)
        rows = image.shape[0]
        if rows == 1 and len(columns) > 1:  # one original for several counterfactuals
            image = image.expand(len(columns), -1, -1, -1)
            rows = len(columns)
        try:
            per_row = preview.split_mask_batch(concept_masks, columns, rows)
        except ValueError as error:
            raise ValueError(f"image / concept_masks / edits: {error}") from None
        per_image = rows // len(columns)
        from fmcgm.pictures import as_uint8
        pictures = as_uint8(image)
        sheets = [preview.labelled_masks(pictures[r], per_row[r], columns[r // per_image]) for r in range(rows)]
        width = max(s.shape[1] for s in sheets)
        batch = np.zeros((len(sheets), sheets[0].shape[0], width, 3), dtype=np.uint8)
        for r, s in enumerate(sheets):
            batch[r, :, :s.shape[1]] = s
        out = torch.from_numpy(batch).float().div_(255.0)
        return io.NodeOutput(out, ui=ui.PreviewImage(out, cls=cls))


class BeforeAfter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMBeforeAfter",
            display_name="Before / After (FM-CGM)",
            category=CSG_CATEGORY,
            description="The original picture, then each edited one, in one preview: click a picture to see it "
                        "large, then the arrow keys toggle between before and after (works in every ComfyUI "
                        "frontend; ComfyUI's own Image Compare slider shows only in Nodes 2.0).",
            is_output_node=True,
            inputs=[
                io.Image.Input("original", tooltip="The picture before the edit."),
                io.Image.Input("edited", tooltip="The edited pictures (e.g. VAE Decode of the CSG Sampler's latent); "
                                                 "scaled to the original's size where they differ."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The original, then the edited pictures.")],
        )

    @classmethod
    def execute(cls, original, edited):
        import torch
        import torch.nn.functional as F
        for name, batch in (("original", original), ("edited", edited)):
            if batch is None or batch.shape[0] == 0:
                raise ValueError(f"{name}: the image batch is empty; connect an IMAGE output with pictures")
        first = original[:1, ..., :3]
        after = edited[..., :3]
        if after.shape[1:3] != first.shape[1:3]:
            after = F.interpolate(after.movedim(-1, 1), size=first.shape[1:3], mode="bilinear",
                                  align_corners=False).movedim(1, -1)
        out = torch.cat([first, after.to(first)], dim=0)
        return io.NodeOutput(out, ui=ui.PreviewImage(out, cls=cls))


NODES = [ConceptMasksPicture, BeforeAfter]
