"""Set a workflow's inputs the way an artist names them: by node title and input name.

``"Picture to edit.image=cat.png"`` sets the ``image`` input of the node titled "Picture to
edit". Titles may themselves hold dots and "=" ("Pick do(concept = value) here"), so an
assignment is split where a known node title ends. ``#12.steps=20`` names a node by id and
``*.steps=20`` sets the input on every node that has it. Values are read by the input's type
in /object_info (INT, FLOAT, BOOLEAN, a COMBO's options); a picture input given a local file
gets that file uploaded. Every mistake is an ``InputError`` that names the node and input and
lists what exists.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..workflow_format import is_widget_spec, node_inputs, spec_options

_NAME = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)=")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
LISTED = 25  # options shown in an error


class InputError(ValueError):
    pass


@dataclass(frozen=True)
class Assignment:
    target: str  # a node title, "#<id>" or "*"
    input: str
    value: str
    text: str  # as the user typed it, for messages


def title_of(prompt: dict, node_id: str) -> str:
    return prompt[node_id].get("_meta", {}).get("title") or prompt[node_id]["class_type"]


def describe_nodes(prompt: dict) -> str:
    return ", ".join(f"{title_of(prompt, k)!r} ({n['class_type']}, #{k})" for k, n in prompt.items())


def parse_assignment(text: str, prompt: dict) -> Assignment:
    """Split "TITLE.input=value" where a node title of ``prompt`` (or #id, or *) ends."""
    titles = {title_of(prompt, k) for k in prompt}
    for match in _NAME.finditer(text):
        target = text[:match.start()]
        if target in titles or target == "*" or (target.startswith("#") and target[1:] in prompt):
            return Assignment(target, match.group(1), text[match.end():], text)
    if not _NAME.search(text):
        raise InputError(f"--set {text!r}: write it as 'Node title.input=value' (e.g. 'Picture to edit.image=cat.png')")
    raise InputError(f"--set {text!r}: no node has that title. Nodes in this workflow: {describe_nodes(prompt)}")


def matching_nodes(prompt: dict, assignment: Assignment) -> list[str]:
    if assignment.target == "*":
        return list(prompt)
    if assignment.target.startswith("#") and assignment.target[1:] in prompt:
        return [assignment.target[1:]]
    return [k for k in prompt if title_of(prompt, k) == assignment.target]


def _spec(object_info: dict, class_type: str, name: str):
    return dict(node_inputs(object_info[class_type]["input"])).get(name)


def convert(value: str, spec, where: str, upload: Optional[Callable[[Path], str]] = None):
    """The typed value of ``value`` for an input of this /object_info spec."""
    kind, options = spec[0], spec_options(spec)
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        if (options.get("image_upload") or options.get("upload")) and upload is not None and Path(value).is_file():
            return upload(Path(value))
        if value not in choices:
            shown = ", ".join(map(repr, choices[:LISTED])) + (f", ... ({len(choices)} in all)"
                                                              if len(choices) > LISTED else "")
            hint = " (a picture input also takes a path to a local file, which is uploaded)" \
                if options.get("image_upload") else ""
            raise InputError(f"{where}: {value!r} is not one of its options: {shown or 'none'}{hint}")
        return value
    if kind == "INT" or kind == "FLOAT":
        try:
            number = int(value) if kind == "INT" else float(value)
        except ValueError:
            raise InputError(f"{where}: {value!r} is not {'an integer' if kind == 'INT' else 'a number'}") from None
        low, high = options.get("min"), options.get("max")
        if (low is not None and number < low) or (high is not None and number > high):
            raise InputError(f"{where}: {number} is outside {low} .. {high}")
        return number
    if kind == "BOOLEAN":
        word = value.strip().lower()
        if word not in _TRUE | _FALSE:
            raise InputError(f"{where}: {value!r} is not true or false")
        return word in _TRUE
    return value  # STRING and anything else the node reads as text


def apply_assignment(prompt: dict, object_info: dict, assignment: Assignment,
                     upload: Optional[Callable[[Path], str]] = None) -> list[str]:
    """Set the input on the matching nodes; returns their ids. Raises InputError naming what exists."""
    nodes = matching_nodes(prompt, assignment)
    if assignment.target == "*":
        nodes = [k for k in nodes if _spec(object_info, prompt[k]["class_type"], assignment.input) is not None
                 and not isinstance(prompt[k]["inputs"].get(assignment.input), list)]
        if not nodes:
            raise InputError(f"--set {assignment.text!r}: no node has a widget input {assignment.input!r}")
    elif len(nodes) > 1:
        ids = ", ".join(f"#{k}" for k in nodes)
        raise InputError(f"--set {assignment.text!r}: {len(nodes)} nodes are titled {assignment.target!r} ({ids}); "
                         f"name one as '#{nodes[0]}.{assignment.input}=...', or set it on every node with "
                         f"'*.{assignment.input}=...'")
    for node_id in nodes:
        node = prompt[node_id]
        where = f"--set {assignment.text!r}: {title_of(prompt, node_id)!r} ({node['class_type']}) input " \
                f"{assignment.input!r}"
        spec = _spec(object_info, node["class_type"], assignment.input)
        if spec is None:
            names = [f"{n} ({'link' if not is_widget_spec(s) else s[0] if isinstance(s[0], str) else 'COMBO'})"
                     for n, s in node_inputs(object_info[node["class_type"]]["input"])]
            raise InputError(f"--set {assignment.text!r}: {title_of(prompt, node_id)!r} ({node['class_type']}) has no "
                             f"input {assignment.input!r}; its inputs: {', '.join(names)}")
        if not is_widget_spec(spec):
            raise InputError(f"{where} takes a connection ({spec[0]}), not a value")
        current = node["inputs"].get(assignment.input)
        if isinstance(current, list):
            raise InputError(f"{where} is connected to node #{current[0]} ({title_of(prompt, current[0])!r}) in this "
                             "workflow; set that node's value instead, or disconnect it in the frontend")
        node["inputs"][assignment.input] = convert(assignment.value, spec, where, upload)
    return nodes


def apply_assignments(prompt: dict, object_info: dict, texts: list[str],
                      upload: Optional[Callable[[Path], str]] = None) -> dict:
    """``prompt`` with every "TITLE.input=value" in ``texts`` applied (in place; returned)."""
    for text in texts:
        apply_assignment(prompt, object_info, parse_assignment(text, prompt), upload)
    return prompt


def picture_inputs(prompt: dict, object_info: dict) -> list[tuple[str, str]]:
    """(node id, input name) of every picture-upload input set by value (LoadImage's ``image``)."""
    found = []
    for node_id, node in prompt.items():
        for name, spec in node_inputs(object_info[node["class_type"]]["input"]):
            if spec_options(spec).get("image_upload") and not isinstance(node["inputs"].get(name), list):
                found.append((node_id, name))
    return found


def choose_picture_input(prompt: dict, object_info: dict, title: Optional[str]) -> tuple[str, str]:
    """The picture input a folder of pictures feeds: the only one, or the one on the node titled ``title``."""
    found = picture_inputs(prompt, object_info)
    if title is not None:
        chosen = [(k, n) for k, n in found if title_of(prompt, k) == title or f"#{k}" == title]
        if len(chosen) != 1:
            listed = ", ".join(repr(title_of(prompt, k)) for k, _ in found) or "none"
            raise InputError(f"--images-into {title!r}: {'no' if not chosen else 'more than one'} picture input "
                             f"has that title; picture inputs in this workflow: {listed}")
        return chosen[0]
    if len(found) != 1:
        listed = ", ".join(f"{title_of(prompt, k)!r} (#{k})" for k, _ in found) or "none"
        raise InputError(f"--images: the workflow has {len(found)} picture inputs ({listed}); "
                         + ("choose one with --images-into TITLE" if found else "add a Load Image node"))
    return found[0]
