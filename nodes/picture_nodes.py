"""``FMCGMPictureSizeLimit``: refuses (or scales down) a picture too large for SDXL before VAE Encode
(``fmcgm.pictures``)."""
from __future__ import annotations

import logging

from ._api import IMAGE_CATEGORY, io, schema

log = logging.getLogger(__name__)


class FMCGMPictureSizeLimit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from fmcgm.pictures import DEFAULT_MAX_MEGAPIXELS, MODES

        return schema(
            node_id="FMCGMPictureSizeLimit",
            display_name="Picture Size Limit (FM-CGM)",
            category=IMAGE_CATEGORY,
            description=(
                "Put between Load Image and VAE Encode: a picture over max_megapixels is refused with its size and "
                "how to resize it (or scaled down, aspect kept, when if_larger is 'resize'), so one huge photograph "
                "cannot exhaust the server's memory in the VAE or the UNet. Smaller pictures pass unchanged."),
            inputs=[
                io.Image.Input("image", tooltip="The picture(s) to edit, as loaded."),
                io.Float.Input("max_megapixels", default=DEFAULT_MAX_MEGAPIXELS, min=0.25, max=64.0, step=0.25,
                               tooltip="Largest picture let through, in megapixels (width x height / 1,000,000). "
                                       "SDXL works near 1; 2 leaves room and fits a CPU or an 8 GB GPU."),
                io.Combo.Input("if_larger", options=list(MODES), default="refuse",
                               tooltip="refuse: stop with a message saying the size and how to resize. resize: "
                                       "scale the picture down to the limit (aspect kept, sides a multiple of 8)."),
            ],
            outputs=[io.Image.Output("limited", display_name="image", tooltip="The picture, within the limit.")],
        )

    @classmethod
    def execute(cls, image, max_megapixels, if_larger) -> io.NodeOutput:
        from fmcgm.pictures import limit_picture

        limited, note = limit_picture(image, max_megapixels, if_larger, "Picture Size Limit: the picture")
        if note:
            log.info("[FMCGM] %s", note)
        return io.NodeOutput(limited)


NODES = [FMCGMPictureSizeLimit]
