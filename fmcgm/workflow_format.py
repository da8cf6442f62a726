"""ComfyUI workflow formats: UI format (saved, shared, dragged onto the canvas) and API format
(POSTed to /prompt), converted both ways given the server's /object_info.

``ui_to_api`` is what the frontend does when you press Queue, reimplemented from its rules,
so a script can queue a shared workflow file through the HTTP API without a browser (and
tests fail when a shipped file drifts from the nodes' schemas, the most common breakage of
example workflows). ``api_to_ui`` lays an API prompt out as a UI workflow; the example
workflows in ``workflows/`` are generated with it. Rules of the UI format:
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


def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _hidden_values(name: str, spec) -> list:
    """Values the frontend stores after a widget's own: a seed's control, an upload button's."""
    options = _options(spec)
    hidden = []
    if spec[0] == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
        hidden.append("fixed")
    if options.get("image_upload") or options.get("upload"):
        hidden.append("image")
    return hidden


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    return list(info.get("required", {}).items()) + list(info.get("optional", {}).items())


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


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
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs, cursor = {}, 0
        for name, spec in _ordered_inputs(object_info[kind]["input"]):
            if _is_widget(spec):
                if cursor >= len(values):
                    raise WorkflowError(f"node {node['id']} ({kind}): no widget value for input {name!r} "
                                        f"(file has {len(values)} values; the node's schema changed?)")
                inputs[name] = values[cursor]
                cursor += 1 + len(_hidden_values(name, spec))
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        if cursor != len(values):
            raise WorkflowError(f"node {node['id']} ({kind}): file has {len(values)} widget values, "
                                f"the node's schema uses {cursor}")
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                   "_meta": {"title": node.get("title", kind)}}
    return prompt


def _widget_value(given, spec):
    """The value a widget shows: the given literal, else (linked or absent) its default."""
    if given is not None and not _is_link(given):
        return given
    default = _options(spec).get("default")
    if default is None and isinstance(spec[0], list) and spec[0]:
        default = spec[0][0]
    return default


def api_to_ui(prompt: dict, object_info: dict, *, extra: dict | None = None,
              column_width: int = 400, row_gap: int = 40) -> dict:
    """A UI-format (version 0.4) workflow for an API prompt, laid out in columns by graph depth.

    Widget inputs fed by a link become sockets, keeping their default as the widget value
    as the frontend does. Node ids must be integers in string form.
    """
    depth: dict[str, int] = {}

    def node_depth(key: str) -> int:
        if key not in depth:
            sources = [v[0] for v in prompt[key]["inputs"].values() if _is_link(v)]
            depth[key] = 1 + max((node_depth(s) for s in sources), default=-1)
        return depth[key]

    links: list[list] = []
    outgoing: dict[tuple[int, int], list[int]] = {}
    column_y: dict[int, int] = {}
    nodes = []
    for order, key in enumerate(sorted(prompt, key=lambda k: (node_depth(k), int(k)))):
        entry, node_id = prompt[key], int(key)
        kind = entry["class_type"]
        if kind not in object_info:
            raise WorkflowError(f"node {key} has unknown type {kind!r}")
        info = object_info[kind]
        inputs, values = [], []
        for name, spec in _ordered_inputs(info["input"]):
            given = entry["inputs"].get(name)
            if _is_widget(spec):
                values += [_widget_value(given, spec), *_hidden_values(name, spec)]
                if not _is_link(given):
                    continue
            socket = {"name": name, "type": "COMBO" if isinstance(spec[0], list) else spec[0], "link": None}
            if _is_widget(spec):
                socket["widget"] = {"name": name}
            if _is_link(given):
                link_id = len(links) + 1
                source_id, slot = int(given[0]), given[1]
                source_kind = prompt[given[0]]["class_type"]
                links.append([link_id, source_id, slot, node_id, len(inputs), object_info[source_kind]["output"][slot]])
                outgoing.setdefault((source_id, slot), []).append(link_id)
                socket["link"] = link_id
            inputs.append(socket)
        output_names = info.get("output_name") or info.get("output", [])
        outputs = [{"name": output_names[slot], "type": kind_, "slot_index": slot, "links": []}
                   for slot, kind_ in enumerate(info.get("output", []))]
        column = node_depth(key)
        height = 60 + 26 * (len(values) + max(len(inputs), len(outputs)))
        y = column_y.get(column, 0)
        column_y[column] = y + height + row_gap
        node = {"id": node_id, "type": kind, "pos": [column * column_width, y], "size": [column_width - 40, height],
                "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": kind}, "widgets_values": values}
        title = entry.get("_meta", {}).get("title")
        if title and title != kind:
            node["title"] = title
        nodes.append(node)
    for node in nodes:
        for output in node["outputs"]:
            output["links"] = outgoing.get((node["id"], output["slot_index"]), [])
    return {"last_node_id": max((n["id"] for n in nodes), default=0), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": extra or {}, "version": 0.4}
