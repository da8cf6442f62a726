"""ComfyUI adapters: each ``*_nodes.py`` module lists its node classes in ``NODES``.

A module that fails to import (a bug, or a missing library it imports eagerly) must not
take the whole pack down: it is skipped, logged, and recorded in ``NODE_MODULE_ERRORS``
so tests and the diagnostics can see it.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

from ._api import ComfyExtension

NODE_MODULE_ERRORS: dict[str, str] = {}


def _node_modules():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.endswith("_nodes"):
            yield info.name


def collect_nodes() -> list:
    classes = []
    for name in _node_modules():
        try:
            module = importlib.import_module(f".{name}", __name__)
        except Exception as exc:  # keep the rest of the pack usable
            NODE_MODULE_ERRORS[name] = f"{type(exc).__name__}: {exc}"
            logging.exception("[FMCGM] could not import nodes/%s.py; its nodes are unavailable", name)
            continue
        classes.extend(getattr(module, "NODES", []))
    return classes


class FMCGMExtension(ComfyExtension):
    async def get_node_list(self) -> list:
        return collect_nodes()


async def comfy_entrypoint() -> FMCGMExtension:
    return FMCGMExtension()
