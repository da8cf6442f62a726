// Causal Graph Editor: the causal graph as an interactive diagram inside the node.
//
// The state lives in the node's own STRING widgets (declared by the backend, so saved in the
// workflow file, restored on load, shared with it, and sent in API prompts):
//   graph_json         the edited graph ("" = use the incoming graph unchanged)
//   intervene_concept  the concept to intervene on ("" = none)
//   intervene_value    its new value
//   edit_base          fingerprint of the incoming graph the edit started from (stale-edit check)
// This extension hides those widgets and shows a diagram instead. After a run the backend
// sends the incoming graph (ui payload "fmcgm_graph_editor", read in onExecuted). Where the
// incoming graph follows from the upstream node's widgets alone (the miniature world's scene),
// the backend computes it on request (GRAPH_PREVIEW_ROUTE), so it is there before any run and
// follows every change of those widgets.
//
// Everything shown comes from a model or a shared file, so it is only ever set as text
// (textContent, input.value, SVG attributes), never parsed as HTML.
import { app } from "../../../scripts/app.js"; // served at /extensions/ComfyUI-FMCGM/js/
import { addStyleOnce } from "./page_style.js";
import { api } from "../../../scripts/api.js";

const NODE_TYPE = "FMCGMCausalGraphEditor";
const UI_KEY = "fmcgm_graph_editor";
const STATE_WIDGETS = ["graph_json", "intervene_concept", "intervene_value", "edit_base"];
const SVG_NS = "http://www.w3.org/2000/svg";
const MARGIN = 8; // around the editor inside its node
const GRAPH_PREVIEW_ROUTE = "/fmcgm/graph_preview";
const PREVIEW_CHECK_MS = 700; // how often the upstream node's widgets are compared (no request unless changed)
const NO_PREVIEW = new Set(); // node types whose graph the backend knows only after a run
let editorCount = 0;

// Same identity as fmcgm.graph.concept_key: "Hair_Color" and "hair color" are one concept.
function conceptKey(name) {
  return String(name).replace(/[_-]/g, " ").split(/\s+/).filter(Boolean).join(" ").toLowerCase();
}

function tidy(text) {
  return String(text ?? "").split(/\s+/).filter(Boolean).join(" ");
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, title, onClick) {
  const b = el("button", "fmcgm-btn", label);
  b.type = "button";
  if (title) b.title = title;
  b.addEventListener("click", (event) => {
    event.preventDefault();
    onClick();
  });
  return b;
}

const STYLE = `
.fmcgm-editor { display: flex; flex-direction: column; gap: 4px; box-sizing: border-box; height: 100%;
  font: 12px/1.3 sans-serif; color: #ddd; padding: 2px; overflow: hidden; }
.fmcgm-editor > * { flex: 0 0 auto; }
.fmcgm-editor * { box-sizing: border-box; }
.fmcgm-editor input, .fmcgm-editor select { font: inherit; color: #eee; background: #222; border: 1px solid #555;
  border-radius: 3px; padding: 2px 4px; min-width: 0; }
.fmcgm-btn { font: inherit; color: #eee; background: #3a3a3a; border: 1px solid #666; border-radius: 3px;
  padding: 2px 6px; cursor: pointer; }
.fmcgm-btn:hover { background: #4a4a4a; }
.fmcgm-btn:disabled { opacity: 0.45; cursor: default; }
.fmcgm-row-ui { display: flex; gap: 4px; align-items: center; flex-wrap: wrap; }
.fmcgm-row-ui > input { flex: 1 1 80px; }
.fmcgm-message { min-height: 16px; white-space: pre-wrap; word-break: break-word; }
.fmcgm-message.error { color: #ff9d8a; }
.fmcgm-message.info { color: #9fd3ff; }
.fmcgm-stale { background: #5a4300; color: #fff3cc; border: 1px solid #c99a00; border-radius: 3px; padding: 4px;
  display: none; gap: 4px; flex-direction: column; }
.fmcgm-stale.shown { display: flex; }
.fmcgm-editor > .fmcgm-diagram { position: relative; flex: 1 0 auto; min-height: 90px; overflow: hidden;
  background: #1b1b1b; border: 1px solid #444; border-radius: 4px; padding: 8px 4px; }
.fmcgm-edges { position: absolute; left: 0; top: 0; width: 0; height: 0; pointer-events: none; overflow: visible; }
.fmcgm-layer { display: flex; justify-content: center; gap: 8px 14px; margin-bottom: 26px; flex-wrap: wrap;
  position: relative; z-index: 1; }
.fmcgm-layer:last-child { margin-bottom: 0; }
.fmcgm-chip { flex: 0 0 auto; max-width: 160px; padding: 4px 6px; border-radius: 5px; white-space: pre-wrap; word-break: break-word;
  text-align: center; cursor: pointer; font: inherit; color: #000; background: #ffffff; border: 1.5px solid #333; }
.fmcgm-chip.intervened, .fmcgm-sw.intervened { background: #E69F00; border: 3px solid #5C3A00; font-weight: bold; }
.fmcgm-chip.descendant, .fmcgm-sw.descendant { background: #56B4E9; border: 2px dashed #0B3C5D; }
.fmcgm-chip.invariant, .fmcgm-sw.invariant { background: #E4E4E4; border: 1px solid #6B6B6B; }
.fmcgm-chip.selected { outline: 3px solid #ff4fd8; outline-offset: 2px; }
.fmcgm-legend { display: flex; gap: 8px; flex-wrap: wrap; font-size: 11px; }
.fmcgm-legend .fmcgm-sw { display: inline-block; width: 14px; height: 11px; margin-right: 3px; vertical-align: -1px;
  border-radius: 2px; }
.fmcgm-panel { border: 1px solid #444; border-radius: 4px; padding: 4px; display: flex; flex-direction: column; gap: 4px; }
.fmcgm-panel-title { font-weight: bold; word-break: break-word; }
.fmcgm-edge-list { display: flex; flex-direction: column; gap: 2px; }
.fmcgm-empty { color: #aaa; padding: 8px; text-align: center; white-space: pre-wrap; }
`;

// ---------------------------------------------------------------- graph helpers (plain objects)

function findConcept(graph, name) {
  const key = conceptKey(name);
  return graph.concepts.find((c) => conceptKey(c.name) === key);
}

function childrenOf(graph, name) {
  return graph.edges.filter((e) => e.cause === name).map((e) => e.effect);
}

function descendantsOf(graph, name) {
  const seen = new Set();
  const stack = [name];
  while (stack.length) {
    for (const child of childrenOf(graph, stack.pop())) {
      if (!seen.has(child)) {
        seen.add(child);
        stack.push(child);
      }
    }
  }
  return seen;
}

// A path from `from` to `to` along the edges, or null.
function pathBetween(graph, from, to) {
  const previous = new Map([[from, null]]);
  const queue = [from];
  while (queue.length) {
    const node = queue.shift();
    if (node === to) {
      const path = [];
      for (let at = to; at !== null; at = previous.get(at)) path.unshift(at);
      return path;
    }
    for (const child of childrenOf(graph, node)) {
      if (!previous.has(child)) {
        previous.set(child, node);
        queue.push(child);
      }
    }
  }
  return null;
}

// Longest-path layers: every cause above its effects.
function layersOf(graph) {
  const layer = new Map();
  const parents = new Map(graph.concepts.map((c) => [c.name, []]));
  for (const e of graph.edges) parents.get(e.effect)?.push(e.cause);
  const visit = (name, depth = 0) => {
    if (layer.has(name)) return layer.get(name);
    if (depth > graph.concepts.length) return 0; // a cycle; cannot happen in a valid graph
    const ps = parents.get(name) || [];
    const value = ps.length ? Math.max(...ps.map((p) => visit(p, depth + 1) + 1)) : 0;
    layer.set(name, value);
    return value;
  };
  graph.concepts.forEach((c) => visit(c.name));
  const rows = [];
  for (const c of graph.concepts) (rows[layer.get(c.name)] ||= []).push(c.name);
  // Each concept under the mean place of its causes, so edges cross less.
  const place = new Map();
  return rows.filter(Boolean).map((row) => {
    const at = (name) => {
      const ps = (parents.get(name) || []).filter((p) => place.has(p));
      return ps.length ? ps.reduce((sum, p) => sum + place.get(p), 0) / ps.length : Infinity;
    };
    const ordered = row.map((name, i) => [at(name), i, name]).sort((a, b) => a[0] - b[0] || a[1] - b[1])
      .map((entry) => entry[2]);
    ordered.forEach((name, i) => place.set(name, (i + 0.5) / ordered.length));
    return ordered;
  });
}

function cloneGraph(graph) {
  return {
    description: graph.description || "",
    concepts: graph.concepts.map((c) => ({ name: c.name, value: c.value, description: c.description || "" })),
    edges: graph.edges.map((e) => ({ cause: e.cause, effect: e.effect })),
  };
}

// Reads graph JSON like the backend's strict reader would need it; returns [graph, error].
function parseGraph(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (error) {
    return [null, `the edited graph (widget 'graph_json') is not valid JSON: ${error.message}`];
  }
  if (!data || typeof data !== "object" || !Array.isArray(data.concepts)) {
    return [null, "the edited graph (widget 'graph_json') has no 'concepts' list"];
  }
  const concepts = [];
  for (const c of data.concepts) {
    if (!c || typeof c.name !== "string" || typeof c.value !== "string") {
      return [null, "the edited graph (widget 'graph_json') has a concept without a text name and value"];
    }
    concepts.push({ name: c.name, value: c.value, description: typeof c.description === "string" ? c.description : "" });
  }
  const names = new Map(concepts.map((c) => [conceptKey(c.name), c.name]));
  const edges = [];
  for (const e of Array.isArray(data.edges) ? data.edges : []) {
    const cause = names.get(conceptKey(e?.cause ?? "")), effect = names.get(conceptKey(e?.effect ?? ""));
    if (!cause || !effect) return [null, "the edited graph (widget 'graph_json') has an edge naming an unknown concept"];
    edges.push({ cause, effect });
  }
  return [{ description: typeof data.description === "string" ? data.description : "", concepts, edges }, null];
}

// ---------------------------------------------------------------- the editor

class CausalGraphEditor {
  constructor(node) {
    addStyleOnce("fmcgm-editor-style", STYLE);
    this.node = node;
    this.id = ++editorCount;
    this.payload = null; // the last ui payload from the backend
    this.preview = null; // {graph, fingerprint} of the upstream node's current widgets, where the backend can say
    this.previewSignature = null;
    this.selected = null;
    this.root = el("div", "fmcgm-editor");
    // Keys typed here must not reach the canvas (Delete would delete the node, etc.).
    for (const type of ["keydown", "keyup", "keypress"]) this.root.addEventListener(type, (e) => e.stopPropagation());
    this.build();
  }

  widget(name) {
    return this.node.widgets?.find((w) => w.name === name);
  }

  get(name) {
    return String(this.widget(name)?.value ?? "");
  }

  set(name, value) {
    const w = this.widget(name);
    if (!w || w.value === value) return;
    w.value = value;
    w.callback?.(value);
    this.node.setDirtyCanvas?.(true, true);
  }

  // The incoming graph: the upstream node's current one where the backend can say, else the
  // one the last run brought; and its fingerprint (for the stale-edit check).
  incoming() {
    if (this.preview) return { graph: this.preview.graph, fingerprint: this.preview.fingerprint };
    return { graph: this.payload?.upstream ?? null, fingerprint: this.payload?.upstream_fingerprint ?? "" };
  }

  // The graph on screen: the edit if there is one, else the incoming graph.
  current() {
    const text = this.get("graph_json").trim();
    if (text) return parseGraph(text);
    const upstream = this.incoming().graph;
    return [upstream ? cloneGraph(upstream) : null, null];
  }

  // {class_type, inputs} of the node feeding the graph input, its widget values as they are now;
  // null when nothing is linked or one of its inputs comes from another node.
  upstreamState() {
    const slot = this.node.findInputSlot?.("graph") ?? -1;
    const source = slot >= 0 ? this.node.getInputNode?.(slot) : null;
    if (!source) return null;
    const declared = source.constructor?.nodeData?.input;
    const names = declared ? new Set([...Object.keys(declared.required ?? {}), ...Object.keys(declared.optional ?? {})])
      : null;
    const inputs = {};
    for (const w of source.widgets ?? []) {
      if (w.serialize === false || (names && !names.has(w.name))) continue;
      if (source.inputs?.find((i) => i.widget?.name === w.name)?.link != null) return null;
      inputs[w.name] = w.value;
    }
    for (const i of source.inputs ?? []) if (i.link != null && !i.widget) return null;
    return { class_type: source.comfyClass ?? source.type, inputs };
  }

  // Asks the backend for the incoming graph when the upstream node's widgets changed.
  async refreshPreview() {
    const state = this.upstreamState();
    const signature = state ? JSON.stringify(state) : "";
    if (signature === this.previewSignature) return;
    this.previewSignature = signature;
    let preview = null;
    if (state && !NO_PREVIEW.has(state.class_type)) {
      try {
        const response = await api.fetchApi(GRAPH_PREVIEW_ROUTE, {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(state) });
        if (signature !== this.previewSignature) return; // a newer change is being asked about
        if (response.status === 404) NO_PREVIEW.add(state.class_type);
        else if (response.ok) preview = await response.json();
        else this.say(`The incoming graph cannot be shown yet: ${(await response.json()).error ?? response.status}`, "error");
      } catch (error) {
        console.warn("[FMCGM] graph preview failed", error);
      }
    }
    if (signature !== this.previewSignature) return;
    const changed = JSON.stringify(preview) !== JSON.stringify(this.preview);
    this.preview = preview;
    if (changed) this.render();
  }

  isEdited() {
    return this.get("graph_json").trim() !== "";
  }

  commit(graph, message) {
    const base = this.incoming().fingerprint;
    if (!this.isEdited() && base) this.set("edit_base", base);
    this.set("graph_json", JSON.stringify(graph, null, 2));
    this.say(message || "", "info");
    this.render();
  }

  say(text, kind = "info") {
    this.message.textContent = text;
    this.message.className = `fmcgm-message ${kind}`;
    requestAnimationFrame(() => this.fitNode()); // a long message pushes, never overprints
  }

  // ------------------------------------------------------------ static parts

  build() {
    const r = this.root;
    this.stale = el("div", "fmcgm-stale");
    this.staleText = el("div", null, "");
    const staleButtons = el("div", "fmcgm-row-ui");
    staleButtons.append(
      button("Use incoming graph", "Discard your edits and use the new incoming graph", () => this.resetToIncoming()),
      button("Keep my edits", "Keep your edited graph and stop warning", () => this.keepEdits()),
    );
    this.stale.append(this.staleText, staleButtons);

    const legend = el("div", "fmcgm-legend");
    for (const [cls, label] of [["intervened", "intervened"], ["descendant", "descendant (changes)"],
      ["invariant", "non-descendant (unchanged)"]]) {
      const item = el("span");
      const sw = el("span", `fmcgm-sw ${cls}`);
      item.append(sw, document.createTextNode(label));
      legend.append(item);
    }

    // do(concept = value)
    const doRow = el("div", "fmcgm-row-ui fmcgm-do");
    this.doConcept = el("select", "fmcgm-do-concept");
    this.doConcept.title = "The concept to intervene on";
    this.doValue = el("input", "fmcgm-do-value");
    this.doValue.placeholder = "new value";
    this.doValue.title = "The intervened concept's new value";
    // "(no intervention)" clears the value too; another concept starts without the old one's value.
    this.doConcept.addEventListener("change", () => this.setIntervention(this.doConcept.value, ""));
    this.doValue.addEventListener("input", () => this.setIntervention(this.doConcept.value, this.doValue.value, false));
    this.doValue.addEventListener("change", () => this.setIntervention(this.doConcept.value, this.doValue.value));
    doRow.append(el("span", null, "do("), this.doConcept, el("span", null, "="), this.doValue, el("span", null, ")"));

    this.message = el("div", "fmcgm-message info");
    this.diagram = el("div", "fmcgm-diagram");
    this.panel = el("div", "fmcgm-panel");

    const addRow = el("div", "fmcgm-row-ui fmcgm-add");
    this.newName = el("input", "fmcgm-new-name");
    this.newName.placeholder = "new concept";
    this.newValue = el("input", "fmcgm-new-value");
    this.newValue.placeholder = "its value";
    addRow.append(this.newName, this.newValue, button("Add concept", "Add a concept to the graph", () => this.addConcept()));

    const footer = el("div", "fmcgm-row-ui");
    this.resetButton = button("Use incoming graph", "Discard all edits", () => this.resetToIncoming());
    this.resetButton.classList.add("fmcgm-reset");
    footer.append(this.resetButton);
    this.status = el("span", "fmcgm-status");
    footer.append(this.status);

    r.append(this.stale, doRow, legend, this.diagram, this.message, this.panel, addRow, footer);
    if (typeof ResizeObserver !== "undefined") {
      this.resizeObserver = new ResizeObserver(() => {
        this.drawEdges();
        this.fitNode(); // a narrower node wraps layers onto more rows
      });
      this.resizeObserver.observe(this.diagram);
    }
  }

  // ------------------------------------------------------------ sizing: the node fits its content

  // The height that shows every part at its own size, the diagram as tall as its layers
  // (no scrolling, nothing clipped); null while the element is not laid out (off screen).
  naturalHeight() {
    if (!this.root.isConnected || !this.root.offsetWidth) return null;
    const style = getComputedStyle(this.root);
    const shown = [...this.root.children].filter((c) => getComputedStyle(c).display !== "none");
    let total = parseFloat(style.paddingTop) + parseFloat(style.paddingBottom) +
      (parseFloat(style.rowGap) || 0) * (shown.length - 1);
    for (const child of shown) total += child === this.diagram ? this.diagramHeight() : child.offsetHeight;
    return Math.ceil(total);
  }

  // Where the last layer (or the empty-graph text) ends, inside the diagram's padding box.
  layersBottom() {
    const rows = [...this.diagram.children].filter((c) => c !== this.svg);
    const last = rows[rows.length - 1];
    return last ? last.offsetTop + last.offsetHeight : 0;
  }

  diagramHeight() {
    const border = this.diagram.offsetHeight - this.diagram.clientHeight;
    return Math.max(90, this.layersBottom() + 8 + border);
  }

  // Grow the node when its content needs more room than it has (never shrink what the user sized).
  fitNode() {
    const natural = this.naturalHeight();
    if (natural === null) return;
    this.minHeight = natural;
    const need = this.node.computeSize?.()?.[1];
    if (need && this.node.size[1] < need - 0.5) {
      this.node.setSize([this.node.size[0], need]);
      this.node.setDirtyCanvas?.(true, true);
    }
  }

  // ------------------------------------------------------------ rendering

  render() {
    this.root.dataset.nodeId = String(this.node.id);
    const [graph, error] = this.current();
    this.graph = graph;
    if (error) this.say(`${error}. Fix or clear it (Use incoming graph).`, "error");
    const base = this.get("edit_base");
    const stale = this.isEdited() && (this.preview
      ? Boolean(base && base !== this.preview.fingerprint)
      : Boolean(this.payload?.stale && base !== this.payload.upstream_fingerprint));
    this.stale.classList.toggle("shown", stale);
    this.staleText.textContent = stale
      ? "The incoming graph has changed since you edited it. Your edited graph is the one used."
      : "";
    this.resetButton.disabled = !this.isEdited();
    this.status.textContent = this.isEdited() ? "edited" : graph ? "incoming graph (no edits)" : "";
    this.renderIntervention();
    this.renderDiagram();
    this.renderPanel();
  }

  renderIntervention() {
    const graph = this.graph;
    const concept = this.get("intervene_concept");
    this.doConcept.replaceChildren();
    const none = el("option", null, "(no intervention)");
    none.value = "";
    this.doConcept.append(none);
    for (const c of graph?.concepts || []) {
      const option = el("option", null, c.name);
      option.value = c.name;
      this.doConcept.append(option);
    }
    const known = graph && concept ? findConcept(graph, concept) : null;
    if (concept && !known) { // keep showing what is stored, even if it is not in the graph
      const option = el("option", null, `${concept} (not in graph)`);
      option.value = concept;
      this.doConcept.append(option);
    }
    this.doConcept.value = known ? known.name : concept;
    if (document.activeElement !== this.doValue) this.doValue.value = this.get("intervene_value");
  }

  roles() {
    const roles = new Map();
    const graph = this.graph;
    if (!graph) return roles;
    const target = findConcept(graph, this.get("intervene_concept"));
    if (!target) return roles;
    const below = descendantsOf(graph, target.name);
    for (const c of graph.concepts) {
      roles.set(c.name, c.name === target.name ? "intervened" : below.has(c.name) ? "descendant" : "invariant");
    }
    return roles;
  }

  renderDiagram() {
    const graph = this.graph;
    this.diagram.replaceChildren();
    this.chips = new Map();
    if (!graph || !graph.concepts.length) {
      this.diagram.append(el("div", "fmcgm-empty",
        "No graph yet.\nRun the workflow to bring in the incoming graph, or add concepts below."));
      requestAnimationFrame(() => this.fitNode());
      return;
    }
    const roles = this.roles();
    const target = findConcept(graph, this.get("intervene_concept"));
    const newValue = tidy(this.get("intervene_value"));
    this.svg = document.createElementNS(SVG_NS, "svg");
    this.svg.setAttribute("class", "fmcgm-edges");
    this.diagram.append(this.svg);
    for (const row of layersOf(graph)) {
      const layer = el("div", "fmcgm-layer");
      for (const name of row) {
        const c = findConcept(graph, name);
        let text = `${c.name}: ${c.value}`;
        if (target && target.name === c.name && newValue) text += `\n-> ${newValue}`;
        const chip = el("button", "fmcgm-chip", text);
        chip.type = "button";
        chip.dataset.concept = c.name;
        if (roles.has(c.name)) chip.classList.add(roles.get(c.name));
        if (this.selected === c.name) chip.classList.add("selected");
        chip.title = c.description || "Click to edit this concept";
        chip.addEventListener("click", () => this.select(c.name));
        layer.append(chip);
        this.chips.set(c.name, chip);
      }
      this.diagram.append(layer);
    }
    requestAnimationFrame(() => {
      this.drawEdges();
      this.fitNode();
    });
  }

  drawEdges() {
    if (!this.svg || !this.graph || !this.svg.isConnected) return;
    const svg = this.svg;
    svg.replaceChildren();
    // Sized to the layers, never beyond: an SVG taller than them would make the diagram scroll.
    svg.style.width = `${this.diagram.clientWidth}px`;
    svg.style.height = `${this.layersBottom()}px`;
    const defs = document.createElementNS(SVG_NS, "defs");
    const markerId = `fmcgm-arrow-${this.id}`;
    const marker = document.createElementNS(SVG_NS, "marker");
    for (const [k, v] of [["id", markerId], ["viewBox", "0 0 10 10"], ["refX", "9"], ["refY", "5"],
      ["markerWidth", "7"], ["markerHeight", "7"], ["orient", "auto-start-reverse"]]) marker.setAttribute(k, v);
    const head = document.createElementNS(SVG_NS, "path");
    head.setAttribute("d", "M 0 0 L 10 5 L 0 10 z");
    head.setAttribute("fill", "#bbb");
    marker.append(head);
    defs.append(marker);
    svg.append(defs);
    // Offsets (not client rectangles) ignore the canvas zoom applied to DOM widgets.
    // The chips' offsetParent is their layer row, whose offsetParent is the diagram.
    const box = (chip) => ({ x: chip.offsetLeft + chip.parentElement.offsetLeft,
      y: chip.offsetTop + chip.parentElement.offsetTop, w: chip.offsetWidth, h: chip.offsetHeight });
    for (const e of this.graph.edges) {
      const a = this.chips.get(e.cause), b = this.chips.get(e.effect);
      if (!a || !b) continue;
      const p = box(a), q = box(b);
      const x1 = p.x + p.w / 2, y1 = p.y + p.h, x2 = q.x + q.w / 2, y2 = q.y;
      const mid = (y1 + y2) / 2;
      const path = document.createElementNS(SVG_NS, "path");
      path.setAttribute("d", `M ${x1} ${y1} C ${x1} ${mid}, ${x2} ${mid}, ${x2} ${y2}`);
      path.setAttribute("fill", "none");
      path.setAttribute("stroke", "#bbb");
      path.setAttribute("stroke-width", "1.5");
      path.setAttribute("marker-end", `url(#${markerId})`);
      path.dataset.edge = `${e.cause}\u0000${e.effect}`;
      svg.append(path);
    }
  }

  renderPanel() {
    const graph = this.graph;
    this.panel.replaceChildren();
    const c = graph && this.selected ? findConcept(graph, this.selected) : null;
    if (!c) {
      this.selected = null;
      this.panel.append(el("div", "fmcgm-empty", graph ? "Click a concept to edit it." : ""));
      return;
    }
    this.panel.append(el("div", "fmcgm-panel-title", `Concept: ${c.name}`));

    const valueRow = el("div", "fmcgm-row-ui");
    const value = el("input", "fmcgm-value");
    value.value = c.value;
    value.title = "This concept's value in the picture";
    value.addEventListener("change", () => this.setValue(c.name, value.value));
    valueRow.append(el("span", null, "value"), value);
    this.panel.append(valueRow);

    const actions = el("div", "fmcgm-row-ui");
    const intervene = button("Intervene on this", "Choose this concept for do(concept = value)", () => {
      const same = conceptKey(this.get("intervene_concept")) === conceptKey(c.name);
      this.setIntervention(c.name, same ? this.get("intervene_value") : "");
      this.doValue.focus();
    });
    intervene.classList.add("fmcgm-intervene");
    const remove = button("Remove concept", "Remove this concept and its edges", () => this.removeConcept(c.name));
    remove.classList.add("fmcgm-remove-concept");
    actions.append(intervene, remove);
    this.panel.append(actions);

    const list = el("div", "fmcgm-edge-list");
    for (const e of graph.edges.filter((e) => e.cause === c.name || e.effect === c.name)) {
      const row = el("div", "fmcgm-row-ui fmcgm-edge");
      row.dataset.edge = `${e.cause}\u0000${e.effect}`;
      const x = button("\u00d7", "Remove this edge", () => this.removeEdge(e.cause, e.effect));
      x.classList.add("fmcgm-remove-edge");
      row.append(x, el("span", null, `${e.cause} \u2192 ${e.effect}`));
      list.append(row);
    }
    this.panel.append(list);

    const edgeRow = el("div", "fmcgm-row-ui");
    const other = el("select", "fmcgm-other");
    for (const o of graph.concepts) {
      if (o.name === c.name) continue;
      const option = el("option", null, o.name);
      option.value = o.name;
      other.append(option);
    }
    const toOther = button("this \u2192 other", "Add an edge: this concept causes the chosen one",
      () => this.addEdge(c.name, other.value));
    toOther.classList.add("fmcgm-edge-out");
    const fromOther = button("other \u2192 this", "Add an edge: the chosen concept causes this one",
      () => this.addEdge(other.value, c.name));
    fromOther.classList.add("fmcgm-edge-in");
    edgeRow.append(el("span", null, "edge"), other, toOther, fromOther);
    if (other.options.length) this.panel.append(edgeRow);
  }

  // ------------------------------------------------------------ actions

  select(name) {
    this.selected = this.selected === name ? null : name;
    this.say("");
    this.render();
  }

  editable() {
    const [graph, error] = this.current();
    if (error) {
      this.say(`${error}. Use incoming graph to start again.`, "error");
      return null;
    }
    return graph ? cloneGraph(graph) : { description: "", concepts: [], edges: [] };
  }

  setValue(name, raw) {
    const graph = this.editable();
    if (!graph) return;
    const value = tidy(raw);
    const c = findConcept(graph, name);
    if (!value) {
      this.say(`The value of "${name}" cannot be empty.`, "error");
      this.render();
      return;
    }
    if (c.value === value) return;
    c.value = value;
    this.commit(graph, `"${name}" = "${value}"`);
  }

  setIntervention(concept, value, rerender = true) {
    this.set("intervene_concept", concept || "");
    this.set("intervene_value", concept ? value ?? "" : "");
    if (rerender) this.render();
  }

  addEdge(cause, effect) {
    const graph = this.editable();
    if (!graph || !cause || !effect) return;
    if (cause === effect) {
      this.say(`Edge refused: "${cause}" cannot cause itself.`, "error");
      return;
    }
    if (graph.edges.some((e) => e.cause === cause && e.effect === effect)) {
      this.say(`The edge "${cause}" \u2192 "${effect}" is already there.`, "error");
      return;
    }
    const back = pathBetween(graph, effect, cause);
    if (back) {
      this.say(`Edge "${cause}" \u2192 "${effect}" refused: it would close the cycle ` +
        [...back, effect].map((n) => `"${n}"`).join(" \u2192 ") + ". A causal graph must stay acyclic.", "error");
      return;
    }
    graph.edges.push({ cause, effect });
    this.commit(graph, `Added the edge "${cause}" \u2192 "${effect}".`);
  }

  removeEdge(cause, effect) {
    const graph = this.editable();
    if (!graph) return;
    graph.edges = graph.edges.filter((e) => !(e.cause === cause && e.effect === effect));
    this.commit(graph, `Removed the edge "${cause}" \u2192 "${effect}".`);
  }

  addConcept() {
    const graph = this.editable();
    if (!graph) return;
    const name = tidy(this.newName.value), value = tidy(this.newValue.value);
    if (!name || !conceptKey(name) || !value) {
      this.say("A new concept needs a name and a value.", "error");
      return;
    }
    const same = findConcept(graph, name);
    if (same) {
      this.say(`"${name}" is the same concept as "${same.name}" (names ignore case, spaces, '_' and '-').`, "error");
      return;
    }
    graph.concepts.push({ name, value, description: "" });
    this.newName.value = "";
    this.newValue.value = "";
    this.selected = name;
    this.commit(graph, `Added the concept "${name}".`);
  }

  removeConcept(name) {
    const graph = this.editable();
    if (!graph) return;
    if (graph.concepts.length <= 1) {
      this.say("A causal graph needs at least one concept.", "error");
      return;
    }
    graph.concepts = graph.concepts.filter((c) => c.name !== name);
    graph.edges = graph.edges.filter((e) => e.cause !== name && e.effect !== name);
    if (conceptKey(this.get("intervene_concept")) === conceptKey(name)) this.setIntervention("", "", false);
    this.selected = null;
    this.commit(graph, `Removed the concept "${name}" and its edges.`);
  }

  resetToIncoming() {
    this.set("graph_json", "");
    this.set("edit_base", "");
    this.say(this.incoming().graph ? "Using the incoming graph." : "Edits cleared; run the workflow to load the incoming graph.");
    this.render();
  }

  keepEdits() {
    const base = this.incoming().fingerprint;
    if (base) this.set("edit_base", base);
    this.say("Keeping your edits.");
    this.render();
  }

  onPayload(payload) {
    this.payload = payload;
    if (payload?.stale) this.say(payload.report || "", "error");
    this.render();
  }
}

app.registerExtension({
  name: "fmcgm.causal_graph_editor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      for (const name of STATE_WIDGETS) {
        const w = this.widgets?.find((x) => x.name === name);
        if (!w) continue;
        // Still saved and sent; the diagram edits them. `hidden` stops drawing (and hides the
        // textarea element); a zero size frees their space in the node's layout.
        w.hidden = true;
        w.computeSize = () => [0, -4];
      }
      const editor = new CausalGraphEditor(this);
      const widget = this.addDOMWidget("graph_editor", "fmcgm_graph_editor", editor.root, {
        serialize: false,
        hideOnZoom: false,
        margin: MARGIN,
        // The frontend sizes the element to the widget's height less a margin above and below.
        getMinHeight: () => (editor.minHeight ?? 300) + 2 * MARGIN,
      });
      widget.serialize = false; // no slot in widgets_values: the state is in the STRING widgets
      this.fmcgmEditor = editor;
      this.setSize([Math.max(this.size[0], 520), Math.max(this.size[1], 520)]);
      editor.render();
      editor.previewTimer = setInterval(() => editor.refreshPreview(), PREVIEW_CHECK_MS);
      return result;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      this.fmcgmEditor?.render(); // widget values were just restored from the workflow
      return result;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.[UI_KEY]?.[0];
      if (typeof text !== "string") return;
      try {
        this.fmcgmEditor?.onPayload(JSON.parse(text));
      } catch (error) {
        console.warn("[FMCGM] unreadable graph editor payload", error);
      }
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.fmcgmEditor?.resizeObserver?.disconnect();
      clearInterval(this.fmcgmEditor?.previewTimer);
      return onRemoved?.apply(this, arguments);
    };
  },
});
