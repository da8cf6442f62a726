// Node reports: the text an FM-CGM node says about its run (a report, a verdict, "No
// intervention chosen yet", an evaluation), shown in the node itself.
//
// Generic: any node of this pack with a text output or an output named like a report or verdict
// (every such node sends what it says as `ui` text) gets a read-only text box when it is created, so the layout has
// room for it before any run; after a run the box shows the node's `ui` text (the "text" key
// that ui.PreviewText sends). Nodes without a box are left alone: a box that appeared only after
// a run would grow the node over its neighbours.
// The text comes from a model or a user, so it is only ever set as a value, never as HTML.
import { app } from "../../../scripts/app.js"; // served at /extensions/ComfyUI-FMCGM/js/
import { addStyleOnce } from "./page_style.js";

const PACK_PREFIX = "FMCGM";
const REPORT_OUTPUT = /report|verdict/i;
const OWN_DISPLAY = new Set(["FMCGMCausalGraphEditor"]); // says its report in its own diagram
const BOX_HEIGHT = 150; // px at zoom 1: about nine lines, scrolls beyond
const WAITING = "The report appears here after a run.";

const STYLE = `
.fmcgm-report { width: 100%; height: 100%; box-sizing: border-box; resize: none; margin: 0;
  font: 12px/1.35 monospace; color: #e8e8e8; background: #1e1e1e; border: 1px solid #555; border-radius: 4px;
  padding: 4px 6px; white-space: pre-wrap; overflow-wrap: anywhere; overflow-y: auto; }
.fmcgm-report.waiting { color: #9a9a9a; font-style: italic; }
`;

function reportsText(nodeData) {
  if (!nodeData?.name?.startsWith(PACK_PREFIX) || OWN_DISPLAY.has(nodeData.name)) return false;
  const names = nodeData.output_name ?? [];
  const types = nodeData.output ?? [];
  return names.some((n) => REPORT_OUTPUT.test(String(n))) || types.some((t) => t === "STRING");
}

function addReportBox(node) {
  addStyleOnce("fmcgm-report-style", STYLE);
  const box = document.createElement("textarea");
  box.className = "fmcgm-report waiting";
  box.readOnly = true;
  box.value = WAITING;
  box.dataset.nodeId = String(node.id);
  box.title = "What this node reported on its last run (select to copy)";
  // Keys typed here must not reach the canvas (Delete would delete the node).
  for (const type of ["keydown", "keyup", "keypress"]) box.addEventListener(type, (e) => e.stopPropagation());
  const widget = node.addDOMWidget("report_text", "fmcgm_report", box, {
    serialize: false,
    getMinHeight: () => BOX_HEIGHT,
    getMaxHeight: () => BOX_HEIGHT,
  });
  widget.serialize = false; // no slot in widgets_values: nothing to save or send
  node.fmcgmReport = box;
  const need = node.computeSize?.();
  if (need && node.size[1] < need[1]) node.setSize([Math.max(node.size[0], need[0]), need[1]]);
  return box;
}

function showReport(node, lines) {
  const box = node.fmcgmReport;
  if (!box) return;
  box.dataset.nodeId = String(node.id);
  box.value = lines.map((t) => String(t)).join("\n\n");
  box.classList.remove("waiting");
  box.scrollTop = 0;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "fmcgm.node_reports",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!reportsText(nodeData)) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      addReportBox(this);
      return result;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (Array.isArray(text) && text.length) showReport(this, text);
      else if (typeof text === "string") showReport(this, [text]);
    };
  },
});
