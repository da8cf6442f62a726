"""Turning CSG results into ComfyUI MASK / IMAGE tensors (no model calls)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# distinct colours for up to 8 concepts (cycled beyond)
PALETTE = torch.tensor([[0.95, 0.26, 0.21], [0.13, 0.59, 0.95], [0.30, 0.69, 0.31], [1.00, 0.76, 0.03],
                        [0.61, 0.15, 0.69], [0.00, 0.74, 0.83], [1.00, 0.34, 0.13], [0.55, 0.76, 0.29]])


def masks_to_mask_batch(masks: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """[R, C, h, w] mean activation masks -> MASK [R * C, h * scale, w * scale] (row-major: for each
    latent row, its concepts in order), nearest upsampling to pixel resolution."""
    R, C, h, w = masks.shape
    m = F.interpolate(masks.reshape(R * C, 1, h, w).float(), scale_factor=scale, mode="nearest")
    return m[:, 0].clamp(0, 1)


def latent_rgb(latent: torch.Tensor, factors, bias=None) -> torch.Tensor:
    """Cheap RGB approximation of a model-space latent with the latent format's linear factors
    -> [R, h, w, 3] in [0, 1]; grey if the format has none."""
    R, C, h, w = latent.shape
    if not factors:
        return torch.full((R, h, w, 3), 0.5)
    f = torch.tensor(factors, dtype=torch.float32)
    rgb = torch.einsum("rchw,cd->rhwd", latent.float().cpu()[:, :f.shape[0]], f)
    if bias:
        rgb = rgb + torch.tensor(bias, dtype=torch.float32)
    return ((rgb + 1) / 2).clamp(0, 1)


def preview(latent_model: torch.Tensor, masks: torch.Tensor, factors=None, bias=None, scale: int = 8) -> torch.Tensor:
    """IMAGE [R, H, W, 3]: the edited latent's RGB approximation, dimmed and greyed, with each
    concept's mean mask (scaled to its own maximum) overlaid in its own colour."""
    R, C, h, w = masks.shape
    base = latent_rgb(latent_model, factors, bias)                       # [R, h, w, 3]
    base = 0.15 + 0.35 * base.mean(dim=-1, keepdim=True).expand(-1, -1, -1, 3)
    colour = torch.zeros(R, h, w, 3)
    weight = torch.zeros(R, h, w, 1)
    for c in range(C):
        m = masks[:, c].float().cpu()
        m = (m / m.flatten(1).amax(dim=1).clamp(min=1e-6).view(-1, 1, 1)).unsqueeze(-1)
        colour += m * PALETTE[c % len(PALETTE)]
        weight += m
    overlay = torch.where(weight > 0, colour / weight.clamp(min=1e-6), base)
    alpha = weight.clamp(max=1) * 0.85
    img = base * (1 - alpha) + overlay * alpha
    img = F.interpolate(img.permute(0, 3, 1, 2), scale_factor=scale, mode="nearest").permute(0, 2, 3, 1)
    return img.clamp(0, 1).contiguous()


# ---------------------------------------------------------------- masks a person can read

PANEL_MIN = 192        # px: small pictures are enlarged (nearest) so a caption fits above them
CAPTION = 40           # px of caption strip above each panel
PANEL_GAP = 6


def mask_columns(edits) -> list[list[tuple[str, str]]]:
    """(phrase, role) of each mask column the CSG Sampler gives, per counterfactual, in its order:
    the counterfactual's concepts (identical phrases merged, as the sampler merges them), then its
    protected non-descendants (role "invariant", only when protection is on). Counterfactuals
    without concepts are left out, as the sampler leaves them out."""
    from ..roles import Role
    from .guidance import dedupe
    columns = []
    for cf in edits.counterfactuals:
        concepts = dedupe(cf.concepts)
        if not concepts:
            continue
        protect = dedupe(cf.protect) if cf.protect_strength > 0 else ()
        columns.append([(c.text or f"concept {j + 1}", str(c.role)) for j, c in enumerate(concepts)]
                       + [(c.text or f"protected {m + 1}", str(Role.INVARIANT)) for m, c in enumerate(protect)])
    return columns


def split_mask_batch(masks: torch.Tensor, columns: list[list], rows: int) -> list[list[torch.Tensor]]:
    """The sampler's MASK batch [rows * C, H, W] (row-major, C = concept columns + protect columns,
    padded to the widest counterfactual) -> per row, the masks of that row's own columns."""
    counterfactuals = len(columns)
    if counterfactuals == 0 or rows % counterfactuals:
        raise ValueError(f"{rows} picture(s) for {counterfactuals} counterfactual(s): connect the decoded "
                         "pictures of the same CSG Sampler run")
    n_concepts = max(sum(1 for _, role in c if role != "invariant") for c in columns)
    n_protect = max(sum(1 for _, role in c if role == "invariant") for c in columns)
    width = n_concepts + n_protect
    if masks.shape[0] != rows * width:
        raise ValueError(f"{masks.shape[0]} masks for {rows} picture(s) x {width} concept(s): connect the CSG "
                         "Sampler's concept_masks of the run that made the pictures")
    per_image = rows // counterfactuals
    out = []
    for r in range(rows):
        own = columns[r // per_image]
        block = masks[r * width:(r + 1) * width]
        k = sum(1 for _, role in own if role != "invariant")
        out.append([block[j] for j in range(k)] + [block[n_concepts + m] for m in range(len(own) - k)])
    return out


def _caption_font(size: int):
    """DejaVu Sans, which matplotlib bundles (the graph drawings use it), else PIL's default."""
    from PIL import ImageFont
    try:
        import matplotlib
        from pathlib import Path
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def labelled_masks(picture, masks, labels):
    """One readable picture (an RGB uint8 array) of where each concept acted: one panel per
    concept, the picture (H x W x 3 uint8) in darkened grey with the concept's mask over it in its
    role's colour (the graph drawing's: intervened orange, descendant sky blue, protected grey),
    its phrase and role above. ``masks``: one [h, w] tensor (values in [0, 1]) per label;
    ``labels``: (phrase, role) pairs."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..render import ROLE_COLOURS
    height, width = picture.shape[:2]
    scale = max(1, -(-PANEL_MIN // max(height, width)))
    big = np.kron(picture, np.ones((scale, scale, 1), dtype=np.uint8)).astype(np.float32)
    big = big.mean(axis=-1, keepdims=True).repeat(3, axis=-1)  # grey, so only the masks carry colour
    H, W = big.shape[:2]
    font, small = _caption_font(15), _caption_font(12)
    sheet = Image.new("RGB", (len(labels) * (W + PANEL_GAP) - PANEL_GAP if labels else W, H + CAPTION),
                      (24, 27, 33))
    draw = ImageDraw.Draw(sheet)
    for i, ((phrase, role), mask) in enumerate(zip(labels, masks)):
        m = F.interpolate(mask.float().reshape(1, 1, *mask.shape[-2:]).cpu(), size=(H, W), mode="nearest")[0, 0]
        alpha = (0.85 * m.clamp(0, 1)).numpy()[..., None]
        colour = np.array(ROLE_COLOURS.get(role, ROLE_COLOURS["invariant"]), dtype=np.float32)
        panel = 0.45 * big * (1 - alpha) + colour * alpha
        x = i * (W + PANEL_GAP)
        sheet.paste(Image.fromarray(panel.clip(0, 255).astype(np.uint8)), (x, CAPTION))
        draw.rectangle([x, 4, x + 12, 16], fill=tuple(int(v) for v in colour))
        text = phrase if draw.textlength(phrase, font=font) <= W - 18 else _shortened(draw, phrase, font, W - 18)
        draw.text((x + 17, 2), text, font=font, fill=(240, 240, 240))
        draw.text((x + 17, 21), "protected" if role == "invariant" else role, font=small, fill=(190, 195, 205))
    return np.asarray(sheet)


def _shortened(draw, text: str, font, room: float) -> str:
    while text and draw.textlength(text + "\u2026", font=font) > room:
        text = text[:-1]
    return text + "\u2026"
