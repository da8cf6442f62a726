"""Convert a UI-format workflow (what users save and share) to an API-format prompt.

This is what the ComfyUI frontend does when you press Queue, reimplemented from its rules
so tests can run the shipped workflow files through the real server without a browser, and
so a test fails when a file drifts from the nodes' schemas (the most common breakage of
shipped example workflows):
- widget values are positional, in the order of the node's inputs in /object_info
  (required, then optional), counting only widget-typed inputs;
- an INT widget with ``control_after_generate`` (or named seed/noise_seed) is followed by a
  hidden "fixed"/"randomize" value, an image-upload combo by its button's value;
- a widget input that has a link takes the link; its value in widgets_values is still there.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


class WorkflowError(ValueError):
    pass


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _hidden_values(name: str, spec) -> int:
    """Values the frontend stores after this widget's own: a seed's control, an upload button's."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    control = spec[0] == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed"))
    upload = options.get("image_upload") or options.get("upload")
    return int(bool(control)) + int(bool(upload))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode", 0) == 2:  # muted nodes are not sent
            continue
        if node.get("mode", 0) == 4:
            raise WorkflowError(f"node {node['id']} ({kind}) is bypassed; the converter does not handle bypass")
        if kind not in object_info:
            raise WorkflowError(f"node {node['id']} has unknown type {kind!r}: is its node pack installed?")
        info = object_info[kind]["input"]
        ordered = list(info.get("required", {}).items()) + list(info.get("optional", {}).items())
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs, cursor = {}, 0
        for name, spec in ordered:
            if _is_widget(spec):
                if cursor >= len(values):
                    raise WorkflowError(f"node {node['id']} ({kind}): no widget value for input {name!r} "
                                        f"(file has {len(values)} values; the node's schema changed?)")
                inputs[name] = values[cursor]
                cursor += 1 + _hidden_values(name, spec)
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        if cursor != len(values):
            raise WorkflowError(f"node {node['id']} ({kind}): file has {len(values)} widget values, "
                                f"the node's schema uses {cursor}")
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                   "_meta": {"title": node.get("title", kind)}}
    return prompt
