"""ComfyUI-FMCGM: causal image editing with a VLM-built causal graph and Causal Semantic Guidance.

ComfyUI entry point. Importing this must stay fast and must never fail because an optional
piece (a VLM library, a model folder) is missing: node modules import heavy libraries only
when a node runs, and a node that cannot work says what is missing when it is used.
"""
import os
import sys

# The library lives beside this file as the top-level package `fmcgm`. Append, never
# prepend: this folder also holds a `nodes/` package, which must not shadow ComfyUI's
# own `nodes` module for anyone else.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

WEB_DIRECTORY = "./web"

# Outside ComfyUI (pytest collecting this folder, a script importing fmcgm) there is no
# extension API to register with; the library itself stays importable.
import importlib.util  # noqa: E402

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import NODE_MODULE_ERRORS, comfy_entrypoint  # noqa: E402,F401

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY", "NODE_MODULE_ERRORS"]
