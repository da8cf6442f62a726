"""VLM loader nodes: a local Qwen3-VL folder (transformers), ComfyUI's own Qwen3-VL (a CLIP,
ComfyUI 0.33+) or an OpenAI-compatible server.

All return the same FMCGM_VLM socket, so every downstream node works with any of them.
"""
from __future__ import annotations

import os

import folder_paths

from fmcgm.options import VLM_ATTENTION, VLM_DTYPES

from ._api import VLM_CATEGORY, io, schema
from ._types import VLMSocket
from ._vlm_inputs import keep_loaded_input, max_image_tokens_input

LLM_FOLDER = "LLM"
NO_MODEL = "(no model folder found in models/LLM)"


def register_llm_folder() -> None:
    """models/LLM, registered so extra_model_paths.yaml entries named LLM are searched too."""
    if LLM_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(LLM_FOLDER, os.path.join(folder_paths.models_dir, LLM_FOLDER))


def llm_model_folders() -> list[str]:
    """Model folders (holding config.json) up to two levels below each LLM directory.

    Never raises: a missing or unreadable directory just contributes nothing.
    """
    found: set[str] = set()
    for base in folder_paths.get_folder_paths(LLM_FOLDER):
        try:
            entries = sorted(os.scandir(base), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if not entry.is_dir():
                continue
            if os.path.isfile(os.path.join(entry.path, "config.json")):
                found.add(entry.name)
                continue
            try:
                for sub in os.scandir(entry.path):
                    if sub.is_dir() and os.path.isfile(os.path.join(sub.path, "config.json")):
                        found.add(f"{entry.name}/{sub.name}")
            except OSError:
                continue
    return sorted(found) or [NO_MODEL]


def resolve_llm_folder(name: str) -> str:
    if name == NO_MODEL:
        raise ValueError("model: no Qwen3-VL folder was found. Put a Hugging Face model folder (config.json, "
                         f"weights, tokenizer, preprocessor_config.json) under {folder_paths.get_folder_paths(LLM_FOLDER)} "
                         "and refresh the node list (press R).")
    for base in folder_paths.get_folder_paths(LLM_FOLDER):
        candidate = os.path.join(base, name)
        if os.path.isdir(candidate):
            return candidate
    raise ValueError(f"model: folder {name!r} is not in any LLM model directory "
                     f"({folder_paths.get_folder_paths(LLM_FOLDER)}); was it moved or renamed?")


register_llm_folder()


class Qwen3VLLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMQwen3VLLoader",
            display_name="Load Qwen3-VL (FM-CGM)",
            category=VLM_CATEGORY,
            description="Loads a local Qwen3-VL folder (dense 2B/4B/8B/32B or MoE 30B-A3B, Instruct or Thinking) "
                        "from models/LLM with transformers, for the Concept Extractor and Concept Manipulator. "
                        "Never downloads. ComfyUI's memory manager moves it to the GPU for generation and "
                        "offloads it afterwards, so SDXL can use the memory.",
            inputs=[
                io.Combo.Input("model", options=llm_model_folders(),
                               tooltip="A Qwen3-VL model folder under models/LLM (or an LLM path in "
                                       "extra_model_paths.yaml)."),
                io.Combo.Input("dtype", options=list(VLM_DTYPES), default="auto",
                               tooltip="Weight precision. auto: bf16 on GPUs that support it, else fp16; fp32 on CPU."),
                io.Combo.Input("attention", options=list(VLM_ATTENTION), default="auto",
                               tooltip="Attention implementation. auto picks flash_attention_2 when installed on a "
                                       "GPU, else PyTorch SDPA."),
                io.Combo.Input("device", options=["auto", "cpu"], default="auto",
                               tooltip="auto: ComfyUI's device (the GPU). cpu: run the VLM on the CPU (slow, "
                                       "but leaves all VRAM to SDXL)."),
                keep_loaded_input("Keep the VLM on the GPU between runs (faster repeated use). Off: it is "
                                  "offloaded after each generation so SDXL gets the memory."),
                max_image_tokens_input("Upper bound on visual tokens per image (the image is resized to fit). "
                                       "Lower it to save memory and time."),
            ],
            outputs=[VLMSocket.Output(display_name="vlm")],
        )

    @classmethod
    def validate_inputs(cls, model):
        """Our own check of the folder (instead of ComfyUI's "value not in list"), so the message
        says where folders are looked for and what to put there, before anything runs."""
        try:
            resolve_llm_folder(model)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, model, dtype, attention, device, keep_loaded, max_image_tokens):
        import comfy.model_management as mm
        import torch
        from fmcgm.vlm.transformers_backend import TransformersBackend, resolve_dtype

        from ._vlm_runtime import ManagedVLM

        path = resolve_llm_folder(model)
        load_device = mm.get_torch_device() if device == "auto" else torch.device("cpu")
        offload_device = mm.unet_offload_device() if device == "auto" else load_device
        # Resolve the dtype for where the model will run, not for the offload device it is loaded to.
        backend = TransformersBackend(path, device=offload_device, dtype=resolve_dtype(dtype, load_device),
                                      attention=attention, max_image_tokens=max_image_tokens)
        return io.NodeOutput(ManagedVLM.of_module(backend, load_device, offload_device, keep_loaded))


class OpenAIVLM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="FMCGMOpenAIVLM",
            display_name="OpenAI-compatible VLM (FM-CGM)",
            category=VLM_CATEGORY,
            description="Uses a VLM served over HTTP with the OpenAI /v1/chat/completions API (vLLM, Ollama, "
                        "LM Studio, llama.cpp server). Answers are constrained to JSON schemas through "
                        "response_format. The API key is read from an environment variable, so workflow files "
                        "never carry secrets, is removed from anything the server sends back, and is sent to "
                        "base_url's host only (no redirects; the system proxy only when asked for).",
            inputs=[
                io.String.Input("base_url", default="http://127.0.0.1:8000/v1",
                                tooltip="Server address, e.g. http://127.0.0.1:8000/v1 (vLLM) or "
                                        "http://127.0.0.1:11434/v1 (Ollama)."),
                io.String.Input("model", default="Qwen/Qwen3-VL-8B-Instruct",
                                tooltip="Model name as the server knows it."),
                io.String.Input("api_key_env", default="",
                                tooltip="NAME of the environment variable holding the API key (e.g. "
                                        "OPENAI_API_KEY), not the key itself: a key typed here is refused. "
                                        "Empty: no key."),
                io.Float.Input("timeout", default=300.0, min=1.0, max=3600.0, step=1.0,
                               tooltip="Deadline in seconds for one answer (one request of the extractor or "
                                       "manipulator), from sending it to the last token, retries and waits "
                                       "included. Cancel stops a waiting request within a fraction of a second."),
                io.Int.Input("retries", default=2, min=0, max=10,
                             tooltip="Retries after connection errors, HTTP 429 and 5xx (not after other 4xx), "
                                     "within the deadline."),
                io.Boolean.Input("use_system_proxy", default=False, optional=True,
                                 tooltip="Send the request through the proxy set in ComfyUI's environment "
                                         "(http_proxy / https_proxy / no_proxy). Off: the request, and the API "
                                         "key with it, goes straight to base_url. Redirects are never followed."),
            ],
            outputs=[VLMSocket.Output(display_name="vlm")],
        )

    @classmethod
    def validate_inputs(cls, base_url=None, api_key_env=None):
        """Refuse a key typed into api_key_env before the prompt is queued: it never reaches /history
        or the log (linked values arrive as None here and are checked when the node runs)."""
        from fmcgm.vlm.api_keys import check_env_name
        from fmcgm.vlm.base import VLMError
        from fmcgm.vlm.openai_backend import chat_completions_url
        try:
            if isinstance(api_key_env, str):
                check_env_name(api_key_env)
            if isinstance(base_url, str):
                chat_completions_url(base_url)
        except VLMError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, base_url, model, api_key_env, timeout, retries, use_system_proxy=False):
        import comfy.model_management as mm
        from fmcgm.vlm.openai_backend import OpenAIBackend

        backend = OpenAIBackend(base_url, model, api_key_env=api_key_env, timeout=timeout, retries=retries,
                                cancel_check=mm.throw_exception_if_processing_interrupted,
                                use_env_proxy=use_system_proxy)
        return io.NodeOutput(backend)


class ComfyQwen3VL(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from fmcgm.vlm.base import COMFY_QWEN3VL_MIN_COMFYUI as MIN_COMFYUI
        return schema(
            node_id="FMCGMComfyQwen3VL",
            display_name="Qwen3-VL from CLIP (FM-CGM)",
            category=VLM_CATEGORY,
            description=f"Uses the Qwen3-VL that ComfyUI itself loads (needs ComfyUI {MIN_COMFYUI} or later): a "
                        "Qwen3-VL 4B or 8B text encoder from Load CLIP, the same one an image model may already "
                        "use, becomes the VLM of the Concept Extractor, Concept Manipulator and Evaluate "
                        "Counterfactual. No transformers model and no second copy of the weights in models/LLM. "
                        "Answers are constrained to each stage's JSON schema; ComfyUI's memory manager loads the "
                        "encoder for generation and offloads it afterwards.",
            inputs=[
                io.Clip.Input("clip", tooltip="A Qwen3-VL 4B/8B text encoder from Load CLIP (type "
                                              "stable_diffusion, or the type of the image model it serves)."),
                keep_loaded_input("Keep the encoder on the GPU between generations (faster repeated use). Off: it "
                                  "is offloaded after each generation so the image model gets the memory."),
                max_image_tokens_input("Upper bound on visual tokens per image (32x32 px each; the image is resized "
                                       "to fit). Lower it to save memory and time."),
            ],
            outputs=[VLMSocket.Output(display_name="vlm")],
        )

    @classmethod
    def execute(cls, clip, keep_loaded, max_image_tokens):
        from fmcgm.vlm.comfy_qwen_backend import ComfyQwen3VLBackend

        from ._vlm_runtime import ManagedVLM

        backend = ComfyQwen3VLBackend(clip, max_image_tokens=max_image_tokens)
        # ComfyUI's own modules run partly offloaded when VRAM is short: no full load forced.
        return io.NodeOutput(ManagedVLM(backend, clip.patcher, keep_loaded, full_load=False))


NODES = [Qwen3VLLoader, ComfyQwen3VL, OpenAIVLM]
