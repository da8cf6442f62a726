// The Read me of this pack's shipped workflows, in a size that can be read at the workflow's
// saved zoom. The frontends draw every Markdown note's text at 10 px (8 px on screen at 80 %);
// only notes marked with the node property "fmcgm_read_me" (set by scripts/build_workflows.py)
// get the larger text, so a user's own notes stay as they are.
import { app } from "../../../scripts/app.js"; // served at /extensions/ComfyUI-FMCGM/js/
import { addStyleOnce } from "./page_style.js";

const MARK = "fmcgm_read_me";
const STYLE = `
.fmcgm-read-me .ProseMirror, .fmcgm-read-me .ProseMirror p, .fmcgm-read-me .ProseMirror li {
  font-size: 14px; line-height: 1.4; }
.fmcgm-read-me .ProseMirror h2 { font-size: 19px; }
`;

function markReadMe(node) {
  if (!node?.properties?.[MARK]) return;
  addStyleOnce("fmcgm-read-me-style", STYLE);
  for (const w of node.widgets ?? []) w.element?.classList?.add("fmcgm-read-me");
}

app.registerExtension({
  name: "fmcgm.read_me",
  loadedGraphNode(node) {
    markReadMe(node);
  },
});
