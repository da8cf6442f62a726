"""Test-only ComfyUI nodes for FM-CGM's test suite and demo (never shipped to users).

ComfyUI's stock checkpoint detection cannot recognise a checkpoint as small as our tiny
SDXL fixture (it guesses a full-size VAE). So that the shipped workflows run unchanged, with
the stock CheckpointLoaderSimple, when the tiny file sits where the real SDXL would, this
pack wraps ``comfy.sd.load_checkpoint_guess_config``: a file carrying the tiny fixture's
metadata is built with its own configs, any other file goes to ComfyUI as usual. That wrap
is the one place the harness reaches into ComfyUI's loading. ``TinySDXLCheckpointLoader``
does the same as a node. Likewise, on a ComfyUI with native Qwen3-VL (0.33+), ``comfy.sd.load_clip``
(the stock Load CLIP) builds a file carrying the tiny Qwen3-VL fixture's metadata with its own
sizes (fmcgm/tiny/comfy_qwen3vl.py). Everything downstream is stock.
"""
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if _REPO not in sys.path:
    sys.path.append(_REPO)

import comfy.sd  # noqa: E402
import folder_paths  # noqa: E402
from comfy_api.latest import ComfyExtension, io  # noqa: E402

from tests.fixtures import tiny_sdxl  # noqa: E402


def _tiny_aware(stock):
    def load_checkpoint_guess_config(ckpt_path, *args, **kwargs):
        if tiny_sdxl.is_tiny_checkpoint(ckpt_path):
            return (*tiny_sdxl.load(ckpt_path), None)  # (model, clip, vae, clip_vision)
        return stock(ckpt_path, *args, **kwargs)
    load_checkpoint_guess_config.fmcgm_tiny_aware = True
    return load_checkpoint_guess_config


if not getattr(comfy.sd.load_checkpoint_guess_config, "fmcgm_tiny_aware", False):
    comfy.sd.load_checkpoint_guess_config = _tiny_aware(comfy.sd.load_checkpoint_guess_config)

try:
    from fmcgm.tiny import comfy_qwen3vl as tiny_comfy_qwen3vl  # noqa: E402
except ImportError:  # a ComfyUI without comfy.text_encoders.qwen3vl
    tiny_comfy_qwen3vl = None


def _tiny_qwen3vl_aware(stock):
    def load_clip(ckpt_paths, embedding_directory=None, clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION,
                  model_options={}, *args, **kwargs):
        if len(ckpt_paths) == 1 and tiny_comfy_qwen3vl.is_tiny_file(ckpt_paths[0]):
            return tiny_comfy_qwen3vl.load(ckpt_paths[0], model_options)
        return stock(ckpt_paths, embedding_directory, clip_type, model_options, *args, **kwargs)
    load_clip.fmcgm_tiny_aware = True
    return load_clip


if tiny_comfy_qwen3vl is not None and not getattr(comfy.sd.load_clip, "fmcgm_tiny_aware", False):
    comfy.sd.load_clip = _tiny_qwen3vl_aware(comfy.sd.load_clip)


def _test_schema(name: str, title: str, description: str, **fields) -> io.Schema:
    """A test node's schema: its id, label and menu place say it is the tests' (FMCGMTest_, FMCGM/testing)."""
    return io.Schema(node_id=f"FMCGMTest_{name}", display_name=f"{title} (FM-CGM tests)", category="FMCGM/testing",
                     description=description, **fields)


class TinySDXLCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _test_schema(
            "TinySDXLCheckpointLoader", "Tiny SDXL Checkpoint Loader",
            "Loads a tiny random-weight SDXL-shaped checkpoint written by tests/fixtures/tiny_sdxl.py.",
            inputs=[io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("checkpoints"),
                                   tooltip="A tiny checkpoint in the checkpoints folder.")],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, ckpt_name):
        return io.NodeOutput(*tiny_sdxl.load(folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)))


def _plain(value):
    """A JSON-able view of any socket value, so tests can read outputs from /history."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "shape"):
        return {"shape": list(value.shape)}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


class Capture(io.ComfyNode):
    """Records whatever reaches it in the prompt's history (ui output), as JSON."""

    @classmethod
    def define_schema(cls):
        return _test_schema(
            "Capture", "Capture", "Test helper: writes its input, as JSON, into the prompt's history.",
            inputs=[io.Custom("*").Input("value", tooltip="Anything.")],
            outputs=[],
            is_output_node=True,
            is_input_list=True,
        )

    @classmethod
    def execute(cls, value):
        import json
        return io.NodeOutput(ui={"fmcgm_capture": [json.dumps(_plain(value))]})


class RecordingVLM(io.ComfyNode):
    """Passes a VLM on unchanged, keeping every (JSON schema, answer) it gives in ``.exchanges``."""

    @classmethod
    def define_schema(cls):
        return _test_schema(
            "RecordingVLM", "Recording VLM",
            "Test helper: the same VLM, recording each request's schema and the raw answer.",
            inputs=[io.Custom("FMCGM_VLM").Input("vlm", tooltip="Any VLM.")],
            outputs=[io.Custom("FMCGM_VLM").Output(display_name="vlm")],
        )

    @classmethod
    def execute(cls, vlm):
        return io.NodeOutput(_Recorder(vlm))


class _Recorder:
    def __init__(self, vlm):
        self.vlm, self.name, self.exchanges = vlm, vlm.name, []

    def describe(self):
        return self.vlm.describe()

    def generate(self, request, on_token=None):
        answer = self.vlm.generate(request, on_token)
        self.exchanges.append((request.json_schema, answer))
        return answer


class _Extension(ComfyExtension):
    async def get_node_list(self):
        return [TinySDXLCheckpointLoader, Capture, RecordingVLM]


async def comfy_entrypoint():
    return _Extension()
