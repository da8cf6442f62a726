"""ComfyUI workflow files (UI format: saved, shared, dragged onto the canvas) turned into the
API prompt that ``/prompt`` takes, given the server's ``/object_info``.

``ui_to_api`` does what the frontend's ``graphToPrompt`` does for plain graphs, so a script can
queue a shared workflow file without a browser. The frontend is the reference: the test suite
compares this function with ``graphToPrompt`` on every shipped workflow, in both tested
frontends. Rules of the UI format that matter here:
- widget values are positional, in the order of the node's inputs in /object_info (required,
  then optional), counting only widget inputs;
- some widgets are followed by values of widgets the frontend adds: an INT's "control after
  generate" combo (when the input asks for it, or, when it does not say, when it is named
  seed/noise_seed), a COMBO's control and its filter, a FLOAT's control (frontend >= 1.49),
  an upload button's value;
- a widget input fed by a link takes the link; its value stays in widgets_values.
Bypassed nodes, subgraphs, PrimitiveNodes and group nodes are not converted: load such a
workflow in the frontend and export it with "Export (API)".
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
DROPPED = {"Note", "MarkdownNote", "Reroute"}  # frontend-only nodes that send nothing


class WorkflowError(ValueError):
    pass


def is_widget_spec(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def spec_options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def node_inputs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) of a node's inputs in /object_info order: required, then optional."""
    return list(info.get("required", {}).items()) + list(info.get("optional", {}).items())


def extra_widget_count(name: str, spec) -> int:
    """How many values the frontend stores after this widget's own (control, filter, upload)."""
    options = spec_options(spec)
    control = options.get("control_after_generate")
    kind = "COMBO" if isinstance(spec[0], list) else spec[0]
    count = 0
    if kind == "INT" and (control if control is not None else name in ("seed", "noise_seed")):
        count += 1
    elif kind == "COMBO" and control:
        count += 2
    elif kind == "FLOAT" and control:
        count += 1
    if options.get("image_upload") or options.get("upload"):
        count += 1
    return count


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt of a UI-format workflow (what Queue sends), node ids as strings."""
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("the workflow has subgraphs; export it from the frontend with Export (API)")
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in DROPPED or node.get("mode", 0) == 2:  # muted nodes are not sent
            continue
        if node.get("mode", 0) == 4:
            raise WorkflowError(f"node {node['id']} ({kind}) is bypassed; export the workflow from the frontend "
                                "with Export (API) to have it wired through")
        if kind not in object_info:
            raise WorkflowError(f"node {node['id']} has unknown type {kind!r}: is its node pack installed?")
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs, cursor = {}, 0
        for name, spec in node_inputs(object_info[kind]["input"]):
            if is_widget_spec(spec):
                if cursor >= len(values):
                    raise WorkflowError(f"node {node['id']} ({kind}): no widget value for input {name!r} "
                                        f"(file has {len(values)} values; the node's schema changed?)")
                inputs[name] = values[cursor]
                cursor += 1 + extra_widget_count(name, spec)
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        if cursor != len(values):
            raise WorkflowError(f"node {node['id']} ({kind}): file has {len(values)} widget values, "
                                f"the node's schema uses {cursor}")
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                   "_meta": {"title": node.get("title", object_info[kind].get("display_name", kind))}}
    return prompt


def default_value(spec):
    """The value a new widget of this input shows: its default, else a COMBO's first option."""
    default = spec_options(spec).get("default")
    if default is None and isinstance(spec[0], list) and spec[0]:
        default = spec[0][0]
    return default


def output_stem(title: str) -> str:
    """A file name stem that says what an output is, from its node's title."""
    import re
    stem = re.sub(r"[^0-9a-z]+", "_", title.lower()).strip("_")
    return stem or "output"


def named_outputs(prompt: dict, outputs: dict) -> list[tuple[str, str, dict]]:
    """(file name, node title, image info) for every picture a run produced, named by the node's
    title ("Counterfactual (CSG)" -> counterfactual_csg.png, numbered when a node gave several);
    ``outputs`` is a /history entry's "outputs"."""
    named, used = [], set()
    for node_id, output in outputs.items():
        title = prompt.get(node_id, {}).get("_meta", {}).get("title") or f"node {node_id}"
        images = output.get("images", [])
        for index, info in enumerate(images, 1):
            stem = output_stem(title) + (f"_{index}" if len(images) > 1 else "")
            while stem in used:  # two nodes with one title
                stem += f"_node{node_id}"
            used.add(stem)
            named.append((f"{stem}.png", title, info))
    return named
