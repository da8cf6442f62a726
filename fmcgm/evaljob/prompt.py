"""The per-item ComfyUI prompt of the evaluation, made from the shipped workflow "FM-CGM CSG vs
baselines" (or any workflow built the same way), so Table 1 measures what artists run.

Changes made to the workflow, each for a reason:
- its VLM becomes the OpenAI-compatible VLM node pointed at the served model (one server feeds
  every worker; a local Qwen3-VL loader node is replaced in place, same id, same output);
- the Concept Manipulator runs in automatic mode with the paper's three interventions per
  picture (the Causal Graph Editor passes the extracted graph through: no edits, no do());
- each Evaluate Counterfactual node gets its edited pictures as one batch (RebatchImages):
  the baselines regenerate one picture per counterfactual prompt, a list, where the node wants
  one batch in counterfactual order;
- save nodes become preview nodes: pictures are fetched by the job (``--save-pictures``) and
  written under names of its own, so a retried item never leaves a second copy;
- the user's ``--set`` assignments (e.g. ``*.steps=20``) last.
Per item, the picture and the caption go into the picture input and the extractor's caption.
Methods are named by what generated the picture an Evaluate node scores, found by walking its
links back (the CSG Sampler, DDIM or DDPM inversion), not by titles.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Optional

from ..runner.inputs import apply_assignments, choose_picture_input, title_of
from ..runner.run import api_prompt
from ..workflow_format import WorkflowError, default_value, is_widget_spec, node_inputs

LOCAL_VLM, SERVED_VLM = "FMCGMQwen3VLLoader", "FMCGMOpenAIVLM"
EXTRACTOR, MANIPULATOR, EDITOR = "FMCGMConceptExtractor", "FMCGMConceptManipulator", "FMCGMCausalGraphEditor"
EVALUATE = "FMCGMEvaluateCounterfactual"
SAVE, PREVIEW, REBATCH = "SaveImage", "PreviewImage", "RebatchImages"
GENERATORS = {"FMCGMCSGSampler": "CSG", "FMCGMDDIMInversion": "DDIM Inversion", "FMCGMDDPMInversion": "DDPM Inversion"}
PAPER_INTERVENTIONS = 3
REBATCH_ALL = 4096  # RebatchImages' maximum: every picture in one batch
RESULTS_UI_KEY = "fmcgm_evaluation"  # where the Evaluate Counterfactual node puts its results as JSON (/history)


@dataclass(frozen=True)
class VLMServer:
    base_url: str
    model: str
    api_key_env: str = ""


@dataclass(frozen=True)
class ItemPrompt:
    """The prompt template and where each item's values go."""

    prompt: dict
    picture: tuple[str, str]           # (node id, input) of the picture
    captions: tuple[tuple[str, str], ...]  # (node id, input) of every extractor's caption
    methods: dict                      # Evaluate node id -> method name
    pictures: dict                     # preview node id -> method name (pictures to keep)

    def for_item(self, picture_name: str, caption: str) -> dict:
        prompt = copy.deepcopy(self.prompt)
        node, name = self.picture
        prompt[node]["inputs"][name] = picture_name
        for node, name in self.captions:
            prompt[node]["inputs"][name] = caption
        return prompt


def method_of(prompt: dict, node_id: str, input_name: str) -> Optional[str]:
    """The method that made what reaches ``input_name`` of ``node_id``: the first generator upstream."""
    seen, frontier = set(), [prompt[node_id]["inputs"].get(input_name)]
    while frontier:
        link = frontier.pop(0)
        if not isinstance(link, list) or link[0] in seen or link[0] not in prompt:
            continue
        seen.add(link[0])
        node = prompt[link[0]]
        if node["class_type"] in GENERATORS:
            return GENERATORS[node["class_type"]]
        frontier += [value for value in node["inputs"].values() if isinstance(value, list)]
    return None


def _defaults(object_info: dict, class_type: str) -> dict:
    return {name: default_value(spec) for name, spec in node_inputs(object_info[class_type]["input"])
            if is_widget_spec(spec)}


def _serve_vlm(prompt: dict, object_info: dict, vlm: VLMServer) -> None:
    if SERVED_VLM not in object_info:
        raise WorkflowError(f"this ComfyUI has no {SERVED_VLM} node: is the FM-CGM pack installed and up to date?")
    vlm_nodes = [k for k, n in prompt.items() if n["class_type"] in (LOCAL_VLM, SERVED_VLM)]
    if not vlm_nodes:
        raise WorkflowError("the workflow has no VLM node (Load Qwen3-VL or OpenAI-compatible VLM)")
    for node_id in vlm_nodes:
        node = prompt[node_id]
        if node["class_type"] == LOCAL_VLM:
            node.update(class_type=SERVED_VLM, inputs=_defaults(object_info, SERVED_VLM),
                        _meta={"title": "VLM server (OpenAI-compatible)"})
        node["inputs"].update(base_url=vlm.base_url, model=vlm.model, api_key_env=vlm.api_key_env)


def _batch_edited(prompt: dict) -> None:
    for node_id in [k for k, n in prompt.items() if n["class_type"] == EVALUATE]:
        link = prompt[node_id]["inputs"].get("edited")
        if isinstance(link, list) and prompt.get(link[0], {}).get("class_type") != REBATCH:
            new_id = f"{node_id}.rebatch"
            prompt[new_id] = {"class_type": REBATCH, "inputs": {"images": link, "batch_size": REBATCH_ALL},
                              "_meta": {"title": f"Batch of {title_of(prompt, node_id)}"}}
            prompt[node_id]["inputs"]["edited"] = [new_id, 0]


def item_prompt(workflow: dict, object_info: dict, vlm: VLMServer, interventions: int = PAPER_INTERVENTIONS,
                assignments: tuple[str, ...] = ()) -> ItemPrompt:
    """The evaluation's prompt template from a CSG-vs-baselines workflow (see the module docstring)."""
    prompt = api_prompt(workflow, object_info)
    kinds = {n["class_type"] for n in prompt.values()}
    for needed, what in ((EXTRACTOR, "a Concept Extractor"), (MANIPULATOR, "a Concept Manipulator"),
                         (EVALUATE, "Evaluate Counterfactual nodes")):
        if needed not in kinds:
            raise WorkflowError(f"the evaluation workflow needs {what} (like 'FM-CGM CSG vs baselines')")
    _serve_vlm(prompt, object_info, vlm)
    for node in prompt.values():
        if node["class_type"] == MANIPULATOR:
            node["inputs"].update(mode="automatic", num_interventions=interventions)
        elif node["class_type"] == EDITOR:
            node["inputs"].update(graph_json="", intervene_concept="", intervene_value="")
        elif node["class_type"] == SAVE:
            node.update(class_type=PREVIEW, inputs={"images": node["inputs"]["images"]})
    methods = {k: method_of(prompt, k, "edited") or title_of(prompt, k)
               for k, n in prompt.items() if n["class_type"] == EVALUATE}
    if len(set(methods.values())) != len(methods):
        raise WorkflowError(f"two Evaluate Counterfactual nodes score the same method: {methods}")
    # the pictures kept per method: a preview of exactly what its Evaluate node scores
    scored = {json.dumps(prompt[k]["inputs"].get("edited")): method for k, method in methods.items()}
    pictures = {k: scored[json.dumps(n["inputs"].get("images"))] for k, n in prompt.items()
                if n["class_type"] == PREVIEW and json.dumps(n["inputs"].get("images")) in scored}
    _batch_edited(prompt)
    apply_assignments(prompt, object_info, list(assignments))
    picture = choose_picture_input(prompt, object_info, None)
    captions = tuple((k, "caption") for k, n in prompt.items() if n["class_type"] == EXTRACTOR)
    return ItemPrompt(prompt, picture, captions, methods, pictures)


def settings_hash(template: ItemPrompt, extra: dict) -> str:
    """What decides an item's results, hashed: the prompt template (models, steps, scales, seeds, the
    VLM's name but not its address) and the job's own settings (``extra``)."""
    prompt = copy.deepcopy(template.prompt)
    for node in prompt.values():
        node.pop("_meta", None)
        if node["class_type"] == SERVED_VLM:
            for name in ("base_url", "api_key_env", "timeout", "retries"):  # where and how, not what, is asked
                node["inputs"].pop(name, None)
    text = json.dumps({"prompt": prompt, "job": extra}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
