"""Shared fixtures. ComfyUI is imported only by tests that ask for it (see comfy_harness)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2 shared cores: one thread each is fastest

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # append: our `nodes/` must not shadow ComfyUI's `nodes`

from fmcgm.tiny.pictures import sample_picture_png  # noqa: E402,F401  (tests import it from here)
from tests import comfy_harness  # noqa: E402

ARTIFACTS = REPO / "test-artifacts"

# Test modules that never touch ComfyUI (graph, parsing, manipulator, prompts, VLM backends):
# they are the same on every ComfyUI lane, so `make test` runs them in the first lane only and
# the others set FMCGM_SKIP_COMFYUI_FREE=1. They run first, before anything imports ComfyUI, and
# a guard fails any of them that does import it (then it belongs to every lane).
COMFYUI_FREE = {
    "test_constrained_real_vocab.py", "test_graph.py", "test_manipulator.py", "test_miniworld.py",
    "test_parsing.py", "test_prompt_agreement.py", "test_properties.py", "test_schema_grammar.py",
    "test_text_hygiene.py", "test_vlm_openai.py", "test_vlm_openai_waits.py", "test_vlm_stages.py",
    "test_vlm_transformers.py", "test_packaging.py", "test_imports.py", "test_one_home.py",
}


def pytest_collection_modifyitems(config, items):
    free = [item for item in items if item.path.name in COMFYUI_FREE]
    for item in free:
        item.add_marker("comfyui_free")
    if os.environ.get("FMCGM_SKIP_COMFYUI_FREE") == "1":
        config.hook.pytest_deselected(items=free)
        items[:] = [item for item in items if item.path.name not in COMFYUI_FREE]
    else:
        items.sort(key=lambda item: item.path.name not in COMFYUI_FREE)  # stable: modules stay together


@pytest.fixture(autouse=True)
def _comfyui_free_guard(request):
    yield
    if request.node.get_closest_marker("comfyui_free") and "comfy" in sys.modules:
        pytest.fail(f"{request.node.path.name} is listed as never touching ComfyUI (tests/conftest.py "
                    "COMFYUI_FREE) but ComfyUI got imported: remove it from the list so every lane runs it")


@pytest.fixture(scope="session")
def comfy_dirs(tmp_path_factory):
    """Real ComfyUI imported in-process, its folders pointed at a scratch directory."""
    dirs = comfy_harness.set_directories(tmp_path_factory.mktemp("comfy"))
    (dirs["input"] / "fmcgm_test.png").write_bytes(sample_picture_png())
    return dirs


@pytest.fixture(scope="session")
def tiny_sdxl_ckpt(comfy_dirs) -> Path:
    """The tiny SDXL checkpoint file, in the checkpoints folder ComfyUI reads."""
    from fmcgm.tiny import sdxl as tiny_sdxl
    return tiny_sdxl.save(comfy_dirs["models"] / "checkpoints" / "tiny_sdxl.safetensors", seed=0)


@pytest.fixture(scope="session")
def comfy(comfy_dirs, tiny_sdxl_ckpt):
    """ComfyUI with built-in extra nodes, this pack and the test pack loaded."""
    results = comfy_harness.load_packs()
    failed = [name for name, ok in results.items() if not ok]
    assert not failed, f"custom node packs failed to import: {failed}"
    return comfy_harness


def tiny_sdxl_picture(seed: int, size: int = 128) -> dict:
    """The tiny SDXL (MODEL, CLIP, VAE) from seed 0 and a random picture (seeded) encoded by its VAE."""
    import torch
    from fmcgm.tiny import sdxl as tiny_sdxl
    model, clip, vae = tiny_sdxl.build(0)
    img = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        latent = {"samples": vae.encode(img)}
    return {"model": model, "clip": clip, "vae": vae, "img": img, "latent": latent}


def tiny_inversion(picture: dict, steps: int, skip: float = 0.15, seed: int = 5):
    """Edit-friendly DPM-Solver++ inversion of ``tiny_sdxl_picture``'s latent, keeping the trajectory
    and adding noise to every step (zero_noise_steps 0), as the CSG invariant tests need."""
    import torch
    from fmcgm.csg import inversion
    with torch.inference_mode():
        return inversion.invert(picture["model"], picture["latent"], steps=steps, skip=skip, seed=seed,
                                zero_noise_steps=0, keep_trajectory=True)


@pytest.fixture(scope="module")
def tiny(comfy_dirs):
    """``tiny_sdxl_picture(seed=3)``, once per module (a module may define its own)."""
    return tiny_sdxl_picture(seed=3)


@pytest.fixture(scope="module")
def inv(request, tiny):
    """``tiny_inversion`` of ``tiny`` with the module's own ``N`` steps and ``SKIP``."""
    return tiny_inversion(tiny, steps=request.module.N, skip=request.module.SKIP)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
