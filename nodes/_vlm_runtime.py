"""ComfyUI glue for VLM backends: memory management, progress bars, cancellation.

A transformers model loaded outside a ModelPatcher is invisible to ComfyUI's memory manager,
which then cannot evict it when SDXL needs the VRAM. So the local backend's torch module is
wrapped in a ModelPatcher: ``load_models_gpu`` brings it onto the GPU for generation (evicting
what must go), and after generation it is offloaded again unless the user keeps it loaded;
even then ComfyUI may evict it under memory pressure, like any other model. ComfyUI's own
Qwen3-VL (a CLIP) already has its patcher: the same loading and offloading apply to it, with the
KV cache the answer needs reserved and partial loading allowed (ComfyUI's modules run partly
offloaded, transformers' cannot). The HTTP backend
needs none of this: its node hands it ComfyUI's interrupt check as ``cancel_check``, polled in
every wait.
"""
from __future__ import annotations

from typing import Optional

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils

from fmcgm.vlm.base import GenerationRequest, TokenCallback


class _ModuleHolder(torch.nn.Module):
    """ModelPatcher writes ``.device`` and bookkeeping attributes on the module it manages;
    a transformers model's ``device`` is a read-only property, so hand it a plain holder."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module
        self.device = next(module.parameters()).device


class ManagedVLM:
    """A VLMBackend whose local torch model is loaded and offloaded by ComfyUI."""

    def __init__(self, backend, patcher, keep_loaded: bool, full_load: bool = True):
        self.backend = backend
        self.name = backend.name
        self.keep_loaded = keep_loaded
        self.patcher = patcher
        self.full_load = full_load

    @classmethod
    def of_module(cls, backend, load_device: torch.device, offload_device: torch.device,
                  keep_loaded: bool) -> "ManagedVLM":
        """For a backend whose ``.model`` is a plain torch module (transformers): our own patcher,
        fully loaded (transformers modules cannot run partially offloaded like ComfyUI's own)."""
        patcher = comfy.model_patcher.ModelPatcher(_ModuleHolder(backend.model), load_device=load_device,
                                                   offload_device=offload_device)
        return cls(backend, patcher, keep_loaded)

    def describe(self) -> str:
        return self.backend.describe()

    def generate(self, request: GenerationRequest, on_token: Optional[TokenCallback] = None) -> str:
        extra = self.backend.memory_required(request) if hasattr(self.backend, "memory_required") else 0
        mm.load_models_gpu([self.patcher], memory_required=extra, force_full_load=self.full_load)
        try:
            return self.backend.generate(request, on_token)
        finally:
            if not self.keep_loaded:
                self.offload()

    def offload(self) -> None:
        for index, loaded in enumerate(mm.current_loaded_models):
            if loaded.model is self.patcher:
                mm.current_loaded_models.pop(index).model_unload()
                break
        mm.soft_empty_cache()


def progress_callback() -> TokenCallback:
    """Advance this node's progress bar per token and stop when the user cancels the queue."""
    bar: list[comfy.utils.ProgressBar] = []

    def on_token(done: int, total: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        if not bar or bar[0].total != total:
            bar[:] = [comfy.utils.ProgressBar(total)]
        bar[0].update_absolute(done, total)
    return on_token
