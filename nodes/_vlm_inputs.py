"""A VLM's settings as node inputs, declared once so their names and ranges agree: sampling (the
Concept Extractor, the Concept Manipulator, Evaluate Counterfactual's judge, the VLM Judge) and
memory (the two local Qwen3-VL loaders). Each node gives its own default where they differ and
says in the tooltip what the setting does there."""
from ._api import io

THINKING_TIP = "Let a Thinking model reason before answering (slower). The reasoning is kept out of the parsed answer."


def temperature_input(default: float, tooltip: str):
    return io.Float.Input("temperature", default=default, min=0.0, max=2.0, step=0.05, tooltip=tooltip)


def max_new_tokens_input(default: int, tooltip: str, least: int = 64):
    return io.Int.Input("max_new_tokens", default=default, min=least, max=32768, tooltip=tooltip)


def seed_input(tooltip: str, **options):
    """``options``: e.g. ``control_after_generate=True`` for a node whose answers should vary run to run."""
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip=tooltip, **options)


def thinking_input(tooltip: str = THINKING_TIP):
    return io.Boolean.Input("enable_thinking", default=False, tooltip=tooltip)


def keep_loaded_input(tooltip: str):
    return io.Boolean.Input("keep_loaded", default=False, tooltip=tooltip)


def max_image_tokens_input(tooltip: str):
    return io.Int.Input("max_image_tokens", default=1280, min=64, max=16384, step=64, tooltip=tooltip)
