"""ComfyUI adapters: each ``*_nodes.py`` module lists its node classes in ``NODES``.

A module that fails to import (a bug, or a missing library it imports eagerly), or a node
whose schema is invalid, must not take the whole pack down: it is skipped, logged, and
recorded in ``NODE_MODULE_ERRORS`` so tests and the diagnostics can see it.
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
        for node_cls in getattr(module, "NODES", []):
            try:  # a schema error in one node must not hide the others
                node_cls.GET_SCHEMA()
            except Exception as exc:
                NODE_MODULE_ERRORS[f"{name}.{node_cls.__name__}"] = f"{type(exc).__name__}: {exc}"
                logging.exception("[FMCGM] node %s in nodes/%s.py has an invalid schema; skipped",
                                  node_cls.__name__, name)
                continue
            classes.append(node_cls)
    return classes


class FMCGMExtension(ComfyExtension):
    async def get_node_list(self) -> list:
        return collect_nodes()


async def comfy_entrypoint() -> FMCGMExtension:
    return FMCGMExtension()
