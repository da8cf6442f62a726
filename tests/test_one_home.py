"""What the editor's JavaScript repeats of the Python side is the same: the role colours
(fmcgm/roles.py), the editor node's type and its ui payload key (fmcgm/options.py). The JS
cannot import Python, so these tests tie its copy to the one home."""
from __future__ import annotations

import re
from pathlib import Path

from fmcgm.options import EDITOR_NODE, EDITOR_UI_KEY
from fmcgm.roles import ROLE_FILL, ROLE_OUTLINE, Role

EDITOR_JS = Path(__file__).resolve().parent.parent / "web" / "js" / "causal_graph_editor.js"
# .fmcgm-chip.<role>, .fmcgm-sw.<role> { background: #RRGGBB; border: 3px solid #RRGGBB; ... }
ROLE_RULE = re.compile(r"\.fmcgm-chip\.(\w+), \.fmcgm-sw\.\1 \{ background: (#[0-9A-Fa-f]{6}); "
                       r"border: [^;#]*(#[0-9A-Fa-f]{6});")


def js_constant(name: str) -> str:
    found = re.search(rf'^const {name} = "([^"]*)";', EDITOR_JS.read_text(encoding="utf-8"), re.MULTILINE)
    assert found, f"web/js/causal_graph_editor.js has no const {name} = \"...\""
    return found.group(1)


def test_the_editor_draws_each_role_in_the_colours_of_roles_py():
    rules = {role: (fill.upper(), outline.upper())
             for role, fill, outline in ROLE_RULE.findall(EDITOR_JS.read_text(encoding="utf-8"))}
    assert rules == {str(role): (ROLE_FILL[role].upper(), ROLE_OUTLINE[role].upper()) for role in Role}


def test_the_editor_names_its_node_and_payload_as_the_python_side():
    assert js_constant("NODE_TYPE") == EDITOR_NODE
    assert js_constant("UI_KEY") == EDITOR_UI_KEY
