"""The stand-ins under the names the shipped workflows use for the real models (the SDXL
checkpoint, the Qwen3-VL folder, the LPIPS backbone), so a workflow file runs unchanged on them,
with the stock CheckpointLoaderSimple (the test pack teaches it the tiny file); and the few
settings a user on a CPU lowers."""
from __future__ import annotations

from pathlib import Path

from ..options import QWEN_FOLDER, QWEN_TEXT_ENCODER, SDXL_CHECKPOINT

# Widget values a CPU user would lower, by input name (applied only where the node has them).
FAST_SETTINGS = {"steps": 12, "warmup": 2, "max_new_tokens": 160, "max_concepts": 4, "width": 384,
                 "height": 384, "max_image_tokens": 64, "num_interventions": 2}
TINY_VLM_SERVED = "tiny-qwen3vl"  # the model name the stand-in VLM server answers to


def prepare_models(models_dir: Path) -> Path:
    """Tiny SDXL, tiny Qwen3-VL (a transformers folder, and on ComfyUI 0.33+ a text encoder file
    too) and a random LPIPS backbone under the real models' names in models_dir; returns an
    extra_model_paths.yaml pointing ComfyUI at them. Imports the lane's ComfyUI (CPU) to build the SDXL."""
    from ..runner.lanes import comfy_version, import_lane_comfy
    import_lane_comfy()
    from . import sdxl
    from .qwen3vl import build_tiny_qwen3vl
    from .vgg16 import VGG16_FILE, save_random_vgg16
    ckpt = models_dir / "checkpoints" / SDXL_CHECKPOINT
    if not ckpt.exists():
        sdxl.save(ckpt, seed=0)
    vlm = vlm_folder(models_dir)
    if not (vlm / "config.json").exists():
        build_tiny_qwen3vl(vlm, variant="dense", seed=0)
    vgg = models_dir / "lpips" / VGG16_FILE
    if not vgg.exists():
        save_random_vgg16(vgg, seed=0)
    text_encoder = models_dir / "text_encoders" / QWEN_TEXT_ENCODER
    if not text_encoder.exists() and comfy_version() >= (0, 33):  # ComfyUI's own Qwen3-VL
        from . import comfy_qwen3vl
        comfy_qwen3vl.save(text_encoder, seed=0)
    paths = models_dir / "extra_model_paths.yaml"
    paths.write_text(f"fmcgm_tiny:\n    base_path: {models_dir}\n    checkpoints: checkpoints\n    LLM: LLM\n"
                     "    lpips: lpips\n    text_encoders: text_encoders\n")
    return paths


def vlm_folder(models_dir: Path) -> Path:
    return models_dir / "LLM" / QWEN_FOLDER
