"""Draw a causal graph (and an intervention on it) as a picture: the Causal Graph Viewer.

Layout and drawing come from well-kept tools, not hand-made geometry:

* layout: Graphviz ``dot`` (layered drawing: causes above effects, crossing reduction,
  spline edges routed around boxes). A graph much wider than the picture gets a width
  bound on its layers, imposed as rank constraints. Only node ids and box sizes are sent
  to it, never concept text. Without
  Graphviz installed, for a graph too big for dot to lay out quickly, or when dot runs out of
  its time, a simpler layered layout is used (see ``_simple_layout``, ``DOT_BUDGET_S``);
* drawing: matplotlib's Agg renderer (no pyplot, no global state) with its bundled DejaVu
  fonts, so the same graph gives the same pixels on every machine with the same versions.

Labels are plain text (never markup: mathtext is switched off, so ``$x$`` stays ``$x$``);
long ones wrap and, past a few lines, end in an ellipsis. Each concept gets one of three
roles once an intervention is chosen, drawn in three colour-blind-safe styles (Okabe-Ito
orange / sky blue / grey, which differ in lightness too, plus solid-thick / dashed / thin
borders), with a legend.

Importing this module is cheap; matplotlib is imported when drawing.
"""
from __future__ import annotations

import math
import textwrap
import threading
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from .graph import CausalGraph
from .roles import ROLE_FILL, ROLE_OUTLINE, Role
from .roles import concept_roles as _intervention_roles

PLAIN = "plain"  # no intervention chosen (a drawing style, not a role in an intervention)

# Fill, border, border width (px at scale 1), border dash, text weight per role.
ROLE_STYLES: dict[str, dict] = {
    Role.INTERVENED: {"face": ROLE_FILL[Role.INTERVENED], "edge": ROLE_OUTLINE[Role.INTERVENED], "width": 3.5,
                      "dash": "solid", "weight": "bold", "legend": "intervened: do(...)"},
    Role.DESCENDANT: {"face": ROLE_FILL[Role.DESCENDANT], "edge": ROLE_OUTLINE[Role.DESCENDANT], "width": 2.2,
                      "dash": (0, (4, 2.5)), "weight": "normal", "legend": "descendant: may change"},
    Role.INVARIANT: {"face": ROLE_FILL[Role.INVARIANT], "edge": ROLE_OUTLINE[Role.INVARIANT], "width": 1.2,
                     "dash": "solid", "weight": "normal", "legend": "non-descendant: unchanged"},
    PLAIN: {"face": "#FFFFFF", "edge": "#333333", "width": 1.4, "dash": "solid", "weight": "normal",
            "legend": "concept"},
}
ROLE_COLOURS = {role: tuple(int(style["face"][i:i + 2], 16) for i in (1, 3, 5)) for role, style in ROLE_STYLES.items()}

BACKGROUND = "#FFFFFF"
EDGE_COLOUR = "#555555"
PROPAGATION_COLOUR = "#0072B2"  # edges along which the intervention propagates
CUT_COLOUR = "#B0B0B0"  # edges into the intervened concept: do() cuts them

# Sizes in pixels at scale 1.
FONT_PX = 15.0
TITLE_PX = 17.0
LINE_SPACING = 1.25
WRAP_CHARS = 22
MAX_VALUE_LINES = 5
MAX_NEW_LINES = 3
PAD_X, PAD_Y = 11.0, 8.0
MIN_BOX_W = 110.0
H_GAP, V_GAP = 34.0, 58.0
MARGIN = 22.0
MAX_SCALE = 2.0  # a small graph is drawn at most this much larger than its natural size

_LOCK = threading.Lock()  # matplotlib is not thread-safe


@dataclass(frozen=True)
class GraphDrawing:
    """The picture and where everything is in it (pixel coordinates of ``image``)."""

    image: np.ndarray  # H x W x 3, uint8
    boxes: dict[str, tuple[float, float, float, float]]  # concept name -> (x0, y0, x1, y1)
    roles: dict[str, str]  # concept name -> role
    labels: dict[str, str]  # concept name -> the text drawn in its box
    layers: dict[str, int]  # concept name -> layer (0 = top)
    scale: float  # drawn size / natural size
    legend: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)  # role -> swatch box
    engine: str = "dot"  # the layout engine used: "dot" (Graphviz) or "simple"

    @property
    def font_px(self) -> float:
        """Height of the label font in the picture, in pixels."""
        return FONT_PX * self.scale


def concept_roles(graph: CausalGraph, concept: Optional[str] = None) -> dict[str, str]:
    """Role of every concept (concept order) for an intervention on ``concept`` (None: no intervention)."""
    if concept is None or not str(concept).strip():
        return {name: PLAIN for name in graph.names}
    return dict(_intervention_roles(graph, concept))


def label_text(name: str, value: str, new_value: Optional[str] = None) -> str:
    """The wrapped text of a concept's box: ``name: value`` and, when it changes, ``-> new value``."""
    lines = _wrap(f"{name}: {value}", MAX_VALUE_LINES)
    if new_value is not None:
        lines += _wrap(f"-> {new_value}", MAX_NEW_LINES)
    return "\n".join(lines)


def _wrap(text: str, max_lines: int) -> list[str]:
    lines = textwrap.wrap(text, WRAP_CHARS, break_long_words=True, break_on_hyphens=True) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        lines[-1] = (last[:WRAP_CHARS - 1] if len(last) >= WRAP_CHARS else last) + "\u2026"
    return lines


def render_counterfactual(counterfactual, *, width: int = 1024, height: int = 1024, engine: str = "auto"
                          ) -> GraphDrawing:
    """Draw a ``fmcgm.manipulator.Counterfactual``: its factual graph, roles and the new values."""
    cf = counterfactual
    new_values = {cf.concept: cf.value, **{name: cf.descendant_values[name] for name in cf.changed}}
    return render_graph(cf.graph, cf.concept, new_values, width=width, height=height, engine=engine)


def render_graph(graph: CausalGraph, concept: Optional[str] = None, new_values: Optional[Mapping[str, str]] = None,
                 *, width: int = 1024, height: int = 1024, title: Optional[str] = None,
                 engine: str = "auto") -> GraphDrawing:
    """Draw ``graph`` with the roles of an intervention on ``concept`` (optional).

    ``new_values`` (concept name -> value) adds ``-> value`` lines. The drawing is scaled to
    fit ``width`` x ``height`` (at most ``MAX_SCALE`` times its natural size) and centred;
    ``height=0`` makes the picture exactly as tall as the drawing needs at that width.
    ``engine``: "dot" (Graphviz, required), "simple" (no Graphviz) or "auto" (dot when
    installed, else simple).
    """
    if engine not in ("auto", "dot", "simple"):
        raise ValueError(f"unknown layout engine {engine!r}; use 'auto', 'dot' or 'simple'")
    if not isinstance(graph, CausalGraph):
        raise TypeError(f"render_graph needs a CausalGraph, got {type(graph).__name__}")
    width, height = int(width), int(height)
    if width < 64 or height < 0 or 0 < height < 64:
        raise ValueError(f"picture size {width}x{height} is too small; use at least 64x64 (height 0 = automatic)")
    roles = concept_roles(graph, concept)
    target = next((n for n, r in roles.items() if r == Role.INTERVENED), None)
    new = {graph.concept(name).name: " ".join(str(v).split()) for name, v in (new_values or {}).items()}
    labels = {c.name: label_text(c.name, c.value, new.get(c.name)) for c in graph.concepts}
    if title is None:
        if target is not None:
            title = f"do({target} = {new.get(target, graph.concept(target).value)})"
        else:
            title = f"Causal graph: {len(graph.concepts)} concept(s), {len(graph.edges)} edge(s)"
    with _LOCK:
        return _Renderer(graph, roles, labels, title, width, height, engine).draw()


class _Renderer:
    def __init__(self, graph: CausalGraph, roles: dict[str, str], labels: dict[str, str], title: str,
                 width: int, height: int, engine: str = "auto"):
        from matplotlib.backends.backend_agg import RendererAgg
        from matplotlib.font_manager import FontProperties

        self.graph, self.roles, self.labels, self.width, self.height = graph, roles, labels, width, height
        self.engine = engine
        self.names = list(graph.names)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.family = _font_family()
        self._measurer = RendererAgg(8, 8, 72)  # at 72 dpi one point is one pixel
        self._props = FontProperties
        self.title_lines = textwrap.wrap(title, 60, max_lines=2, placeholder=" \u2026") or [""]
        self.with_legend = any(r != PLAIN for r in roles.values())

    # ---------------------------------------------------------------- measuring

    def text_size(self, text: str, size: float, weight: str = "normal") -> tuple[float, float]:
        prop = self._props(family=self.family, size=size, weight=weight)
        widest = 0.0
        for line in text.split("\n"):
            w, _, _ = self._measurer.get_text_width_height_descent(line or " ", prop, ismath=False)
            widest = max(widest, w)
        lines = text.count("\n") + 1
        return widest * 1.04, lines * size * LINE_SPACING  # a little slack: hinting differs between scales

    # ---------------------------------------------------------------- layout (natural pixels)

    def layout(self) -> None:
        """Box sizes from the labels, then positions and edge paths from the layout engine."""
        self.size = {}
        for n in self.names:
            w, h = self.text_size(self.labels[n], FONT_PX, ROLE_STYLES[self.roles[n]]["weight"])
            self.size[n] = (max(MIN_BOX_W, w + 2 * PAD_X), h + 2 * PAD_Y)
        aspect = self.width / self.height if self.height else 1.0
        title_h = len(self.title_lines) * TITLE_PX * LINE_SPACING + 16
        legend_h = 42.0 if self.with_legend else 0.0

        def fit(layout: Optional[Layout]) -> float:  # how large it can be shown in the picture
            if layout is None:
                return -1.0
            return min(aspect / (layout[2] + 2 * MARGIN), 1.0 / (layout[3] + title_h + legend_h + 2 * MARGIN))

        placed = simple = None
        if self.engine in ("auto", "dot"):
            placed = _dot_layout(self.graph, self.size, aspect, required=self.engine == "dot")
        if self.engine == "simple" or placed is None:
            placed, self.engine_used = _simple_layout(self.graph, self.size, aspect), "simple"
        else:
            self.engine_used = "dot"
            if self.engine == "auto":
                # Text that stays readable beats spline routing: a dense graph that dot cannot
                # fit into the picture at a readable size takes the compact layout instead.
                simple = _simple_layout(self.graph, self.size, aspect)
                if fit(simple) > 1.3 * fit(placed):
                    placed, self.engine_used = simple, "simple"
        centre, paths, body_w, body_h = placed
        title_w, _ = self.text_size("\n".join(self.title_lines), TITLE_PX, "bold")
        self.nat_w = max(body_w + 2 * MARGIN, self.legend_width() + 2 * MARGIN, title_w + 2 * MARGIN, 240.0)
        self.nat_h = MARGIN + title_h + body_h + legend_h + MARGIN
        dx, dy = (self.nat_w - body_w) / 2, MARGIN + title_h
        self.centre = {n: (x + dx, y + dy) for n, (x, y) in centre.items()}
        self.paths = [[(x + dx, y + dy) for x, y in path] for path in paths]
        rows = sorted({round(y, 1) for _, y in centre.values()})
        self.layer = {n: rows.index(round(y, 1)) for n, (_, y) in centre.items()}

    def legend_items(self) -> list[str]:
        return [Role.INTERVENED, Role.DESCENDANT, Role.INVARIANT]

    def legend_width(self) -> float:
        if not self.with_legend:
            return 0.0
        return sum(28 + self.text_size(ROLE_STYLES[r]["legend"], FONT_PX * 0.85)[0] + 22 for r in self.legend_items())

    # ---------------------------------------------------------------- drawing

    def draw(self) -> GraphDrawing:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.layout()
        if self.height:
            out_w, out_h = self.width, self.height
            scale = min(out_w / self.nat_w, out_h / self.nat_h, MAX_SCALE)
        else:
            scale = min(self.width / self.nat_w, MAX_SCALE)
            out_w, out_h = self.width, max(64, int(math.ceil(self.nat_h * scale)))
        self.scale = scale
        dpi = 100.0
        fig = Figure(figsize=(out_w / dpi, out_h / dpi), dpi=dpi, facecolor=BACKGROUND)
        FigureCanvasAgg(fig)
        draw_w, draw_h = self.nat_w * scale, self.nat_h * scale
        # Whole pixels for the drawing's origin, so positions are exact and deterministic.
        left, bottom = math.floor((out_w - draw_w) / 2), math.floor((out_h - draw_h) / 2)
        ax = fig.add_axes((left / out_w, bottom / out_h, draw_w / out_w, draw_h / out_h))
        ax.set_xlim(0, self.nat_w)
        ax.set_ylim(self.nat_h, 0)  # y grows downwards, as in the picture
        ax.set_axis_off()
        self.ax, self.pt = ax, scale * 72.0 / dpi  # natural px -> points
        top_px = out_h - bottom - draw_h  # the drawing's top edge in the picture

        def to_px(x: float, y: float) -> tuple[float, float]:
            return left + x * scale, top_px + y * scale

        self.draw_title()
        self.draw_edges()
        boxes = {}
        for n in self.names:
            x0, y0, x1, y1 = self.draw_box(n)
            boxes[n] = (*to_px(x0, y0), *to_px(x1, y1))
        legend = {role: (*to_px(b[0], b[1]), *to_px(b[2], b[3])) for role, b in self.draw_legend().items()}
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        image = np.ascontiguousarray(rgba[:, :, :3])
        return GraphDrawing(image=image, boxes=boxes, roles=dict(self.roles), labels=dict(self.labels),
                            layers=dict(self.layer), scale=scale, legend=legend, engine=self.engine_used)

    def text(self, x: float, y: float, s: str, size: float, **kw) -> None:
        self.ax.text(x, y, s, fontsize=size * self.pt, family=self.family, parse_math=False,
                     linespacing=LINE_SPACING, usetex=False, **kw)

    def draw_title(self) -> None:
        self.text(self.nat_w / 2, MARGIN, "\n".join(self.title_lines), TITLE_PX, ha="center", va="top",
                  weight="bold", color="#111111")

    def box_rect(self, n: str) -> tuple[float, float, float, float]:
        (cx, cy), (w, h) = self.centre[n], self.size[n]
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    def draw_box(self, n: str) -> tuple[float, float, float, float]:
        from matplotlib.patches import FancyBboxPatch

        style = ROLE_STYLES[self.roles[n]]
        x0, y0, x1, y1 = self.box_rect(n)
        radius = 6.0
        self.ax.add_patch(FancyBboxPatch((x0 + radius, y0 + radius), x1 - x0 - 2 * radius, y1 - y0 - 2 * radius,
                                         boxstyle=f"round,pad={radius}", facecolor=style["face"],
                                         edgecolor=style["edge"], linewidth=style["width"] * self.pt,
                                         linestyle=style["dash"], zorder=3))
        self.text((x0 + x1) / 2, (y0 + y1) / 2, self.labels[n], FONT_PX, ha="center", va="center",
                  multialignment="center", weight=style["weight"], color="#000000", zorder=4)
        return x0, y0, x1, y1

    def draw_edges(self) -> None:
        """Every edge as a cubic Bezier spline ending in a filled arrow head, all drawn as two collections
        (bodies, heads): one artist per edge cost ~1 ms each before anything was drawn, seconds for the
        2,016 edges of a dense 64-concept graph."""
        from matplotlib.collections import PathCollection, PolyCollection
        from matplotlib.path import Path

        moving = {n for n, r in self.roles.items() if r in (Role.INTERVENED, Role.DESCENDANT)}
        target = next((n for n, r in self.roles.items() if r == Role.INTERVENED), None)
        bodies, heads, colours, widths, dashes = [], [], [], [], []
        for e, points in zip(self.graph.edges, self.paths):
            if e.effect == target:  # do() cuts the edges into the intervened concept
                colour, width, dash = CUT_COLOUR, 1.4, (0, (2, 2))
            elif e.cause in moving and e.effect in moving:
                colour, width, dash = PROPAGATION_COLOUR, 2.4, "solid"
            else:
                colour, width, dash = EDGE_COLOUR, 1.4, "solid"
            body, head = _arrow(points)
            # start, then (control, control, end) triples of a cubic Bezier spline, then the line to the head
            bodies.append(Path(body, [Path.MOVETO] + [Path.CURVE4] * (len(body) - 2) + [Path.LINETO]))
            heads.append(head)
            colours.append(colour)
            widths.append(width * self.pt)
            dashes.append(dash)
        if not bodies:
            return
        self.ax.add_collection(PathCollection(bodies, facecolors="none", edgecolors=colours, linewidths=widths,
                                              linestyles=dashes, zorder=2, transform=self.ax.transData),
                               autolim=False)
        self.ax.add_collection(PolyCollection(heads, facecolors=colours, edgecolors=colours,
                                              linewidths=[0.5 * self.pt] * len(heads), zorder=2,
                                              transform=self.ax.transData), autolim=False)

    def draw_legend(self) -> dict[str, tuple[float, float, float, float]]:
        from matplotlib.patches import Rectangle

        if not self.with_legend:
            return {}
        swatches = {}
        size = FONT_PX * 0.85
        x = (self.nat_w - self.legend_width()) / 2
        y = self.nat_h - MARGIN - 14
        for role in self.legend_items():
            style = ROLE_STYLES[role]
            self.ax.add_patch(Rectangle((x, y - 9), 22, 18, facecolor=style["face"], edgecolor=style["edge"],
                                        linewidth=style["width"] * self.pt, linestyle=style["dash"], zorder=3))
            swatches[role] = (x, y - 9, x + 22, y + 9)
            self.text(x + 28, y, style["legend"], size, ha="left", va="center", color="#111111")
            x += 28 + self.text_size(style["legend"], size)[0] + 22
        return swatches


Point = tuple[float, float]
Layout = tuple[dict[str, Point], list[list[Point]], float, float]  # centres, edge paths, width, height

ARROW_LEN = 10.0
HEAD_LEN, HEAD_HALF_WIDTH = 8.0, 4.0  # the filled arrow head drawn at an edge's tip


def _arrow(points: list[Point]) -> tuple[list[Point], list[Point]]:
    """An edge path [start, (control, control, end)..., tip] as its body, ending where the head begins,
    and the head triangle (tip, then the two corners of its base)."""
    (tx, ty), (px, py) = points[-1], points[-2]
    length = math.hypot(tx - px, ty - py) or 1.0
    ux, uy = (tx - px) / length, (ty - py) / length
    back = min(HEAD_LEN, length)
    bx, by = tx - ux * back, ty - uy * back
    head = [(tx, ty), (bx - uy * HEAD_HALF_WIDTH, by + ux * HEAD_HALF_WIDTH),
            (bx + uy * HEAD_HALF_WIDTH, by - ux * HEAD_HALF_WIDTH)]
    return [*points[:-1], (bx, by)], head
DOT_TIMEOUT_S = 30  # all of dot's runs together, when the caller asks for dot (engine="dot")
# With engine="auto" dot gets this long for all its runs, and is not tried at all on a graph whose edges
# cross more than DOT_MAX_CROSSINGS layers in all (dot lays every layer an edge crosses out as a node of
# its own: a dense 32-concept graph has 5,456 of them and one dot run took 12 s, a dense 20-concept one
# 1,330 and 0.2 s); the simple layout draws those at once (benchmarks/bench_big_graphs.py).
DOT_BUDGET_S = 3.0
DOT_MAX_CROSSINGS = 1500


def layer_crossings(graph: CausalGraph) -> int:
    """Edges plus the layers they skip, under longest-path layering: the size of dot's layered graph."""
    layer: dict[str, int] = {}
    for name in graph.topological_order():
        layer[name] = max((layer[p] + 1 for p in graph.parents(name)), default=0)
    return sum(max(1, layer[e.effect] - layer[e.cause]) for e in graph.edges)


def _dot_layout(graph: CausalGraph, size: Mapping[str, Point], aspect: float, required: bool = False
                ) -> Optional[Layout]:
    """Graphviz ``dot``: ranks by network simplex, crossing reduction, splines around boxes.

    Only node ids (``n0``, ``n1``...) and box sizes go into the DOT text; labels are drawn by
    matplotlib, so no concept text ever reaches Graphviz. When dot's own ranking is much
    wider than the picture, layers with a width bound (``_bounded_layers``: causes still
    above effects) are imposed as rank constraints and the best-fitting drawing is kept.
    Returns None (or raises, if ``required``) without a working ``dot``, and unless ``required``
    also for a graph too big for dot (``DOT_MAX_CROSSINGS``) or when its first run does not end
    within ``DOT_BUDGET_S``; later runs only get what is left of that budget.
    """
    import json
    import logging
    import shutil
    import subprocess
    import time

    dot = shutil.which("dot")
    if dot is None:
        if required:
            raise RuntimeError("Graphviz is not installed (no 'dot' program on PATH); install it "
                               "(apt install graphviz / brew install graphviz / winget install graphviz)")
        return None
    if not required and layer_crossings(graph) > DOT_MAX_CROSSINGS:
        return None
    budget_end = time.monotonic() + (DOT_TIMEOUT_S if required else DOT_BUDGET_S)
    names = list(graph.names)
    ids = {name: f"n{i}" for i, name in enumerate(names)}
    lines = ["digraph G {",
             f"graph [rankdir=TB, nodesep={H_GAP / 72:.4f}, ranksep={V_GAP / 72:.4f}, splines=spline];",
             'node [shape=box, fixedsize=true, label=""];',
             f"edge [arrowhead=normal, arrowsize={ARROW_LEN / 10:.3f}];"]
    lines += [f"{ids[n]} [width={size[n][0] / 72:.4f}, height={size[n][1] / 72:.4f}];" for n in names]
    lines += [f"{ids[e.cause]} -> {ids[e.effect]};" for e in graph.edges]
    source = "\n".join(lines + ["}"])

    def run(cmd: list[str], text: str) -> str:
        left = budget_end - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(cmd, 0)
        done = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=left)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stderr.strip()[:500]}")
        return done.stdout

    def constrained(layer: Mapping[str, int]) -> str:
        """The same graph with ``layer`` imposed: rank=same groups held in order by invisible anchors."""
        depth = max(layer.values()) + 1
        extra = ['node [shape=point, width=0, height=0, style=invis]; edge [style=invis];']
        for k in range(depth):
            members = " ".join(ids[n] for n in names if layer[n] == k)
            extra.append(f"{{ rank=same; L{k}; {members} }}")
        extra += [f"L{k} -> L{k + 1};" for k in range(depth - 1)]
        return source[:-1] + "\n".join(extra) + "\n}"

    bound = _layer_bound(size, aspect)
    attempts = [source] + [constrained(_bounded_layers(graph, b))
                           for b in sorted({max(2, bound - 1), bound, bound + 1, bound + 2}) if b < len(names)]
    best, best_fit = None, -1.0
    try:
        for text in attempts:
            try:
                data = json.loads(run([dot, "-Tjson0"], text))
            except subprocess.TimeoutExpired:
                if best is None:
                    raise
                break  # the time is spent: the best drawing so far
            x0, y0, x1, y1 = (float(v) for v in data["bb"].split(","))
            # how large the drawing can be shown in a picture of this shape (title, legend, margins included)
            fit = min(aspect / (x1 - x0 + 2 * MARGIN), 1.0 / (y1 - y0 + 6 * MARGIN))
            if fit > best_fit * 1.05:  # dot's own ranks unless a width bound gains clearly
                best, best_fit = (data, x0, y0, x1, y1), fit
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError, KeyError) as error:
        if required:
            raise RuntimeError(f"Graphviz layout failed: {error}") from error
        logging.warning("[FMCGM] Graphviz layout failed (%s); using the simple layout", error)
        return None
    result = best
    data, x0, y0, x1, y1 = result

    def point(token: str) -> Point:
        x, y = (float(v) for v in token.split(","))
        return x - x0, y1 - y  # Graphviz's y grows upwards

    by_gvid = {obj["_gvid"]: obj["name"] for obj in data.get("objects", [])}
    names_by_id = {v: k for k, v in ids.items()}
    centre = {names_by_id[obj["name"]]: point(obj["pos"]) for obj in data["objects"] if obj["name"] in names_by_id}
    splines: dict[tuple[str, str], list[Point]] = {}
    for edge in data.get("edges", []):
        tail, head = names_by_id.get(by_gvid[edge["tail"]]), names_by_id.get(by_gvid[edge["head"]])
        if tail is None or head is None or "pos" not in edge:
            continue
        tokens = edge["pos"].split()
        tip = next((point(t[2:]) for t in tokens if t.startswith("e,")), None)
        body = [point(t) for t in tokens if not t.startswith(("e,", "s,"))]
        splines[tail, head] = body + [tip or body[-1]]
    paths = [splines[e.cause, e.effect] for e in graph.edges]
    return centre, paths, x1 - x0, y1 - y0


def _layer_bound(size: Mapping[str, Point], aspect: float) -> int:
    """Concepts per layer that makes a drawing of these boxes about as wide, relative to its height, as ``aspect``."""
    n = len(size)
    avg_w = sum(w for w, _ in size.values()) / n
    avg_h = sum(h for _, h in size.values()) / n
    return max(2, round(math.sqrt(n * (avg_h + V_GAP) / (avg_w + H_GAP) * aspect)))


def _bounded_layers(graph: CausalGraph, bound: int) -> dict[str, int]:
    """Each concept in the first layer below all its causes that holds fewer than ``bound`` concepts.

    Causes stay above effects; many unconnected concepts wrap into rows (a greedy layering
    with a width bound, in the manner of Coffman-Graham).
    """
    layer: dict[str, int] = {}
    used: dict[int, int] = {}
    for name in graph.topological_order():
        k = max((layer[p] + 1 for p in graph.parents(name)), default=0)
        while used.get(k, 0) >= bound:
            k += 1
        layer[name] = k
        used[k] = used.get(k, 0) + 1
    return layer


def _simple_layout(graph: CausalGraph, size: Mapping[str, Point], aspect: float) -> Layout:
    """Without Graphviz: bounded-width layers (causes above effects), barycenter order, S-curves.

    Layers: each concept goes to the first layer below all its causes that has room (the
    width bound keeps the drawing near the picture's shape). Within a layer, concepts
    are ordered by the mean position of their causes. Edges that skip layers may pass
    behind boxes; the Graphviz layout routes around them.
    """
    names = list(graph.names)
    layer = _bounded_layers(graph, max(4, _layer_bound(size, aspect)))
    rows: list[list[str]] = [[] for _ in range(max(layer.values()) + 1)]
    for name in names:
        rows[layer[name]].append(name)
    slot: dict[str, float] = {}
    for row in rows:
        def barycenter(name: str) -> float:
            parents = graph.parents(name)
            return sum(slot[p] for p in parents) / len(parents) if parents else math.inf
        row.sort(key=lambda name: (barycenter(name), names.index(name)))
        for i, name in enumerate(row):
            slot[name] = (i + 0.5) / len(row)
    widths = [sum(size[m][0] for m in row) + H_GAP * (len(row) - 1) for row in rows]
    body_w = max(widths)
    centre: dict[str, Point] = {}
    top = 0.0
    for row, row_w in zip(rows, widths):
        row_h = max(size[m][1] for m in row)
        x = (body_w - row_w) / 2
        for name in row:
            centre[name] = (x + size[name][0] / 2, top + row_h / 2)
            x += size[name][0] + H_GAP
        top += row_h + V_GAP
    body_h = top - V_GAP
    incoming: dict[str, list[int]] = {name: [] for name in names}
    for i, e in enumerate(graph.edges):
        incoming[e.effect].append(i)
    paths: list[list[Point]] = [[] for _ in graph.edges]
    for name, ids in incoming.items():
        ids.sort(key=lambda i: (centre[graph.edges[i].cause][0], i))
        (cx, cy), (w, h) = centre[name], size[name]
        for k, i in enumerate(ids):
            cause = graph.edges[i].cause
            (sx, sy), (_, sh) = centre[cause], size[cause]
            start = (sx, sy + sh / 2)
            tip = (cx - w * 0.3 + w * 0.6 * (k + 1) / (len(ids) + 1), cy - h / 2)
            end = (tip[0], tip[1] - ARROW_LEN)
            bend = (end[1] - start[1]) / 2
            paths[i] = [start, (start[0], start[1] + bend), (end[0], end[1] - bend), end, tip]
    return centre, paths, body_w, body_h


_FAMILY: Optional[list[str]] = None


def _font_family() -> list[str]:
    """matplotlib's bundled DejaVu Sans first (deterministic), then installed fonts for other scripts."""
    global _FAMILY
    if _FAMILY is None:
        from matplotlib import font_manager

        installed = {f.name for f in font_manager.fontManager.ttflist}
        fallbacks = ["Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans", "Microsoft YaHei", "Arial Unicode MS"]
        _FAMILY = ["DejaVu Sans"] + [f for f in fallbacks if f in installed]
    return _FAMILY


__all__ = ["GraphDrawing", "render_graph", "render_counterfactual", "concept_roles", "label_text", "ROLE_STYLES",
           "ROLE_COLOURS", "Role", "PLAIN"]
