#!/usr/bin/env python3
"""Generate the example workflows in workflows/ with ComfyUI's real frontend.

Each workflow is defined once here: its nodes as an API-format graph (only the inputs that
differ from the node's defaults; the rest keep their defaults), the stages it is laid out
in (one column and one group each) and the Note that tells a user what to do. The files
themselves are written by the frontend: this script starts a real ComfyUI with this pack,
opens its frontend in Chromium, creates each node there, sets widgets by name, connects
sockets by name, reads back the frontend's own node sizes to lay the stages out without
overlap, and saves ``app.graph.serialize()``, so widget order and every other detail of the
format are the frontend's. It also saves a thumbnail (``<name>.jpg``, the file the Templates
dialog asks for) showing the laid-out workflow. The file name is the template's title.

tests/test_workflow_frontend.py drops each shipped file on the canvas of both tested
frontends, checks every input by name against these definitions and runs it.

Usage: python scripts/build_workflows.py   (after `make setup`; uses the 0.3.75 lane)
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # `fmcgm` as a script; appended: our `nodes/` must not shadow ComfyUI's
from fmcgm import options  # noqa: E402

WORKFLOWS = REPO / "workflows"
SDXL = options.SDXL_CHECKPOINT
QWEN = options.QWEN_FOLDER
EXAMPLE_PICTURE = options.EXAMPLE_PICTURE
MODELS = [{"name": SDXL, "directory": "checkpoints",
           "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors"}]
GAP = 60            # between columns and between nodes in a column
GROUP_PAD = 30      # group border around its nodes
GROUP_TITLE = 50    # room for the group's title bar
MIN_WIDTH = 340
NOTE_SIZE = (520, 820)
# Nodes that show pictures get room for them up front: the frontend adds a 220 px preview
# widget when the first picture (or live preview) arrives, drawn below the node's widgets
# whether or not the node has room for it, so a node without that room covers its neighbour.
PICTURE_NODES = {"SaveImage", "PreviewImage", "FMCGMCausalGraphViewer", "LoadImage", "FMCGMConceptMasksPicture",
                 "FMCGMBeforeAfter"}
LIVE_PREVIEW_NODES = {"FMCGMDPMSolverInversion", "FMCGMDDPMInversion", "FMCGMDDIMInversion", "FMCGMCSGSampler",
                      "FMCGMRegenerateFromInversion"}
PREVIEW_ROOM = 240      # the frontend's 220 px preview widget and its margins
PICTURE_NODE_HEIGHT = 380
TEXT_HEADROOM = 1.08
VIEW_SCALE = 0.9    # the Read me's 14 px text (web/js/read_me.js) is 12.6 px on screen
THUMBNAIL = 512
TOP_BAND = 56  # px of the card left empty at the top (see thumbnail)


@dataclasses.dataclass(frozen=True)
class Workflow:
    name: str                              # file name and template title
    graph: dict                            # API format; literal inputs override the defaults
    stages: tuple[tuple[str, tuple[str, ...]], ...]   # (group title, node ids top to bottom)
    note: str                              # Markdown shown in a Note at the top left
    widths: dict = dataclasses.field(default_factory=dict)  # node id -> width where the default is too narrow
    # The thumbnail's example: (graph dict, intervened concept, new values); None = GRAPH_ONLY_EXAMPLE's
    example: tuple | None = None
    # What else the thumbnail shows instead of that drawing: a picture of the workflow's result
    # (repo path, crop box or None), or several interventions drawn side by side.
    picture: tuple | None = None
    interventions: tuple = ()


def node(kind: str, title: str | None = None, **inputs) -> dict:
    entry = {"class_type": kind, "inputs": inputs}
    if title:
        entry["_meta"] = {"title": title}
    return entry


# ----------------------------------------------------------------------------- definitions

def _models_and_picture(graph: dict, vlm: str | None = "local") -> None:
    """Nodes 1-4: the SDXL checkpoint, the picture, its latent, the VLM."""
    graph["1"] = node("CheckpointLoaderSimple", "SDXL checkpoint", ckpt_name=SDXL)
    graph["2"] = node("LoadImage", "Picture to edit", image=EXAMPLE_PICTURE)
    # a picture over the size limit is refused (or scaled down) before the VAE, not left to run out of memory
    graph["19"] = node("FMCGMPictureSizeLimit", "Picture size limit", image=["2", 0])
    graph["3"] = node("VAEEncode", pixels=["19", 0], vae=["1", 2])
    if vlm == "local":
        graph["4"] = node("FMCGMQwen3VLLoader", "Qwen3-VL (local)", model=QWEN)
    elif vlm == "openai":
        graph["4"] = node("FMCGMOpenAIVLM", "VLM server (OpenAI-compatible)", base_url="http://127.0.0.1:8000/v1",
                          model="Qwen/Qwen3-VL-8B-Instruct")


def _extract(graph: dict) -> None:
    """Nodes 5-6: the Concept Extractor and its drawing."""
    graph["5"] = node("FMCGMConceptExtractor", vlm=["4", 0], image=["2", 0])
    graph["6"] = node("FMCGMCausalGraphViewer", "Causal graph (as read)", graph=["5", 0])


def _editor(workflow: dict, **inputs) -> None:
    """Node 7: the Causal Graph Editor, with no intervention chosen: the artist picks it."""
    workflow["7"] = node("FMCGMCausalGraphEditor", "Pick do(concept = value) here", **inputs)


def _manipulate(graph: dict, causal_graph: list, mode: str, with_vlm: bool = True, **inputs) -> None:
    """Node 8 the Concept Manipulator, node 9 the counterfactual's drawing."""
    vlm = {"vlm": ["4", 0], "image": ["2", 0]} if with_vlm else {}
    graph["8"] = node("FMCGMConceptManipulator", causal_graph=causal_graph, mode=mode, **vlm, **inputs)
    graph["9"] = node("FMCGMCausalGraphViewer", "Counterfactual graph", counterfactual=["8", 0])


def _render(graph: dict, label: str) -> None:
    """Nodes 10-15: inversion, CSG edits, sampler, decode, the counterfactual and the masks."""
    graph["10"] = node("FMCGMDPMSolverInversion", model=["1", 0], latent=["3", 0])
    graph["11"] = node("FMCGMCSGEditsFromCounterfactual", clip=["1", 1], counterfactual=["8", 0])
    graph["12"] = node("FMCGMCSGSampler", model=["1", 0], inversion=["10", 0], edits=["11", 0])
    graph["13"] = node("VAEDecode", samples=["12", 0], vae=["1", 2])
    graph["14"] = node("SaveImage", "Counterfactual (CSG)", images=["13", 0], filename_prefix=f"fmcgm/{label}")
    graph["15"] = node("FMCGMConceptMasksPicture", "Where each concept acted (masks)", image=["13", 0],
                       concept_masks=["12", 1], edits=["11", 0])
    # Before and after, toggled in ComfyUI's own picture preview. Not ComfyUI's Image Compare node:
    # 0.3.75 has none, and frontend 1.58.1 draws it only in Nodes 2.0 (its default canvas shows
    # "ImageCompare: Vue-only" in its place).
    graph["41"] = node("FMCGMBeforeAfter", "Before / after (click one, then arrow keys)", original=["2", 0],
                       edited=["13", 0])


RENDER_STAGE = ("4. Render the edit with CSG", ("10", "11", "12", "13"))
OUTPUT_STAGE = ("Outputs", ("14", "41", "15", "9"))

MODELS_NOTE = """**Models** (the pack never downloads):
- SDXL checkpoint (any eps-prediction SDXL) in `ComfyUI/models/checkpoints/`, chosen in *SDXL checkpoint*.
- {vlm}

**Picture**: choose it in *Picture to edit*."""
LOCAL_VLM = ("Qwen3-VL in `ComfyUI/models/LLM/<folder>/` (a whole Hugging Face folder, e.g. "
             "`hf download Qwen/Qwen3-VL-8B-Instruct --local-dir ComfyUI/models/LLM/Qwen3-VL-8B-Instruct`), "
             "chosen in *Qwen3-VL (local)*.")
SERVED_VLM = ("A Qwen3-VL served over the OpenAI API (vLLM, Ollama, LM Studio, llama.cpp): set *VLM server* "
              "`base_url` and `model` (e.g. `vllm serve Qwen/Qwen3-VL-8B-Instruct` → `http://127.0.0.1:8000/v1`); "
              "a key, if needed, goes in an environment variable whose *name* you type in `api_key_env`.")
TWO_RUNS = """**Run 1** (Queue): the VLM reads the picture; its causal graph appears in *Pick do(concept = value) here* \
and in *Causal graph (as read)*. Nothing is rendered yet.

**Pick the intervention**: in the editor click a concept, press *Intervene on this*, type the new value, Enter \
(you can also fix values, edges and concepts there first).

**Run 2** (Queue again): the manipulator changes the intervened concept and propagates it to its descendants \
only; CSG renders the counterfactual as a minimal edit of the picture."""
OUTPUTS = """**Outputs**: *Counterfactual (CSG)* is the edited picture (saved to `output/fmcgm/`); *Where each concept \
acted* shows, for each edited concept, where CSG changed the picture, in the concept's colour with its name; \
*Counterfactual graph* draws the intervention (orange), the descendants that change (blue, dashed) and what stays \
(grey). Each node's report (the manipulator's, the oracle's or the evaluation) is shown in the node."""


def causal_edit(vlm: str = "local") -> Workflow:
    graph: dict = {}
    _models_and_picture(graph, vlm)
    _extract(graph)
    _editor(graph, graph=["5", 0])
    _manipulate(graph, ["7", 0], "manual", concept=["7", 1], value=["7", 2])
    _render(graph, "csg")
    title = "FM-CGM causal edit" if vlm == "local" else "FM-CGM causal edit (VLM server)"
    # the served workflow's card draws another intervention, so the two cards differ at a glance
    shown = () if vlm == "local" else (("umbrella", {"umbrella": "closed"}),)
    note = (f"## {title}\nEdit a picture causally: do(concept = value) changes that concept and what it causes, "
            f"nothing else.\n\n{MODELS_NOTE.format(vlm=LOCAL_VLM if vlm == 'local' else SERVED_VLM)}\n\n"
            f"{TWO_RUNS}\n\n{OUTPUTS}")
    return Workflow(title, graph, (
        ("Models and picture", ("1", "2", "19", "3", "4")),
        ("1. Read the picture", ("5", "6")),
        ("2. Choose the intervention", ("7",)),
        ("3. Propagate it", ("8",)),
        RENDER_STAGE, OUTPUT_STAGE), note, interventions=shown)


def automatic_interventions() -> Workflow:
    graph: dict = {}
    _models_and_picture(graph)
    _extract(graph)
    _manipulate(graph, ["5", 0], "automatic")
    _render(graph, "auto")
    title = "FM-CGM automatic interventions"
    note = (f"## {title}\nThe VLM reads the picture, proposes interventions on different concepts "
            "(`num_interventions`), propagates each, and CSG renders them all from one inversion, as one batch.\n\n"
            f"{MODELS_NOTE.format(vlm=LOCAL_VLM)}\n\n**Run** (Queue once): one counterfactual per proposal.\n\n"
            f"{OUTPUTS}")
    return Workflow(title, graph, (
        ("Models and picture", ("1", "2", "19", "3", "4")),
        ("1. Read the picture", ("5", "6")),
        ("2. Propose and propagate", ("8",)),
        RENDER_STAGE, OUTPUT_STAGE), note, interventions=(
            ("weather", {"weather": "sunny", "hair": "dry", "umbrella": "closed"}), ("umbrella", {"umbrella": "closed"}),
            ("age", {"age": "elderly"})))


def baselines() -> Workflow:
    base = causal_edit()
    graph = dict(base.graph)
    graph["20"] = node("CLIPTextEncode", "Full counterfactual prompt", clip=["1", 1], text=["8", 1])
    for first, kind, label in ((21, "FMCGMDDIMInversion", "DDIM"), (25, "FMCGMDDPMInversion", "DDPM")):
        inv, regen, decode, save = (str(first + i) for i in range(4))
        graph[inv] = node(kind, model=["1", 0], latent=["3", 0])
        graph[regen] = node("FMCGMRegenerateFromInversion", model=["1", 0], inversion=[inv, 0], positive=["20", 0])
        graph[decode] = node("VAEDecode", samples=[regen, 0], vae=["1", 2])
        graph[save] = node("SaveImage", f"Baseline ({label} inversion)", images=[decode, 0],
                           filename_prefix=f"fmcgm/{label.lower()}")
    for evaluator, (decoded, label) in zip(("30", "31", "32"), (("13", "CSG"), ("23", "DDIM"), ("27", "DDPM"))):
        graph[evaluator] = node("FMCGMEvaluateCounterfactual", f"Evaluate {label}", original=["2", 0],
                                edited=[decoded, 0], counterfactual=["8", 0], vlm=["4", 0])
    title = "FM-CGM CSG vs baselines"
    note = (f"## {title}\nThe paper's comparison: the same counterfactual rendered by CSG and by DDIM and DDPM "
            "inversion regenerated with the full counterfactual prompt, each scored with VLM-Eff (does the picture "
            "show the new values?) and LPIPS (how far from the original).\n\n"
            f"{MODELS_NOTE.format(vlm=LOCAL_VLM)}\n- LPIPS needs torchvision's VGG16 weights "
            "`vgg16-397923af.pth` in `ComfyUI/models/lpips/`.\n\n"
            f"{TWO_RUNS}\n\n{OUTPUTS} The *Baseline* pictures and the three *Evaluate* reports sit beside them.")
    return Workflow(title, graph, base.stages[:-1] + (
        OUTPUT_STAGE,
        ("5. The paper's baselines", ("20", "21", "22", "23", "25", "26", "27")),
        ("Baseline outputs", ("24", "28")),
        ("6. Score each method", ("30", "31", "32"))), note,
        # the same methods on the miniature world (benchmarks/bench_miniworld.py): original, DDIM, DDPM, CSG
        picture=("benchmarks/results/miniworld_table1_examples.png", (0, 0, 528, 160)))


GRAPH_ONLY_EXAMPLE = {
    "description": "a woman with wet hair standing in the rain",
    "concepts": [{"name": "weather", "value": "rainy"}, {"name": "hair", "value": "wet"},
                 {"name": "umbrella", "value": "open"}, {"name": "age", "value": "young adult"}],
    "edges": [{"cause": "weather", "effect": "hair"}, {"cause": "weather", "effect": "umbrella"}]}


def graph_only() -> Workflow:
    graph: dict = {}
    _models_and_picture(graph, vlm=None)
    _editor(graph, graph_json=json.dumps(GRAPH_ONLY_EXAMPLE, indent=2))
    _manipulate(graph, ["7", 0], "graph-only", with_vlm=False, concept=["7", 1], value=["7", 2],
                descendant_values="hair: dry\numbrella: closed")
    _render(graph, "graph_only")
    title = "FM-CGM graph only (no VLM)"
    note = (f"## {title}\nNo VLM: you describe the picture's causal graph and the descendants' new values "
            "yourself.\n\n**Models**: an SDXL checkpoint (eps-prediction) in `ComfyUI/models/checkpoints/`. "
            "**Picture**: *Picture to edit*.\n\n**Graph**: the editor holds an example graph (weather → hair, "
            "weather → umbrella, age): edit it to match your picture (click a concept to change its value or edges; "
            "add concepts below the diagram).\n\n**Pick the intervention** in the editor (click *weather*, "
            "*Intervene on this*, type *sunny*, Enter) and type each descendant's new value in the manipulator's "
            "`descendant_values` (one `concept: value` per line; the example has those for do(weather = ...)).\n\n"
            f"**Run** (Queue).\n\n{OUTPUTS}")
    return Workflow(title, graph, (
        ("Models and picture", ("1", "2", "19", "3")),
        ("1. Describe the graph, choose do()", ("7",)),
        ("2. Propagate it", ("8",)),
        RENDER_STAGE, OUTPUT_STAGE), note, picture=("docs/graph_editor.png", None))


MINIWORLD_CHECKPOINT = "fmcgm-miniworld-sdxl.safetensors"  # ships in the pack's models/ folder
MINIWORLD_SCENE = {"weather": "rainy", "house": "red house", "house_side": "house on the left side", "layout_seed": 7}
# What the Read me suggests trying in the editor: each changes something on MINIWORLD_SCENE's picture.
MINIWORLD_SUGGESTIONS = (("weather", "snowy"), ("ground", "dry ground"), ("house", "blue house"))


def miniature_world() -> Workflow:
    """A real edit with no downloads: the tiny SDXL trained on the miniature world (it ships with
    the pack), the world's known graph and mechanisms in place of the VLM, do(weather = sunny)
    preset, and the world's oracle reading the result."""
    graph: dict = {}
    graph["1"] = node("FMCGMLoadTinySDXLCheckpoint", "Miniature world model (ships with the pack)",
                      ckpt_name=MINIWORLD_CHECKPOINT)
    graph["2"] = node("FMCGMMiniworldScene", "Picture of the miniature world", **MINIWORLD_SCENE)
    graph["3"] = node("VAEEncode", pixels=["2", 0], vae=["1", 2])
    graph["18"] = node("PreviewImage", "Original", images=["2", 0])
    _editor(graph, graph=["2", 1], intervene_concept="weather", intervene_value="sunny")
    graph["16"] = node("FMCGMMiniworldMechanisms", "The world's mechanisms (instead of a VLM)",
                       graph=["7", 0], concept=["7", 1], value=["7", 2])
    _manipulate(graph, ["7", 0], "graph-only", with_vlm=False, concept=["7", 1], value=["7", 2],
                descendant_values=["16", 0])
    _render(graph, "miniworld")
    # The self-checking edit takes the place of CSG Edits, the CSG Sampler and the decode: it renders CSG
    # rounds (decoding each for the judge, the world's oracle) and DDPM regeneration when CSG does not pass.
    for key in ("11", "12", "13", "15"):
        del graph[key]
    from fmcgm.miniworld.pipeline import TUNED  # the paper's settings edit this small model too little
    graph["12"] = node("FMCGMSelfCheckingEdit", "Render the edit and check it (judged by the world's oracle)",
                       model=["1", 0], clip=["1", 1], vae=["1", 2], latent=["3", 0], inversion=["10", 0],
                       counterfactual=["8", 0], judge=["2", 4], edit_guidance=TUNED["edit_guidance"],
                       threshold=TUNED["threshold"])
    graph["14"] = node("SaveImage", "Counterfactual (self-checked)", images=["12", 0], filename_prefix="fmcgm/miniworld")
    graph["15"] = node("PreviewImage", "Every round, in order", images=["12", 3])
    graph["41"]["inputs"]["edited"] = ["12", 0]
    graph["17"] = node("FMCGMMiniworldOracle", "Does the edit show it? (the world's oracle)",
                       image=["12", 0], counterfactual=["8", 0], oracle_judge=["2", 4])
    title = "FM-CGM miniature world (real edit, no downloads)"
    note = (f"## {title}\nA real causal edit on a model that has learned its concepts, with nothing to download: "
            "a tiny SDXL trained on this pack's miniature world (weather → sky, ground, windows; the house's "
            "colour and side independent of it), which ships in the pack's `models/` folder.\n\n**Run** (Queue): "
            "do(weather = sunny) on a rainy picture. The world's mechanisms give the descendants' new values "
            "(what a VLM does for real pictures), the manipulator propagates them, and the *Self-Checking Edit* "
            "renders it with CSG, lets the world's oracle read each round and tries again where it failed (more "
            "guidance for a value not shown, a changed house held on the original, and DDPM regeneration as the "
            "last rounds); its report gives every round. It starts at "
            f"`edit_guidance` {TUNED['edit_guidance']:g} and `threshold` {TUNED['threshold']:g}: the paper's "
            f"{options.EDIT_GUIDANCE:g} and {options.THRESHOLD:g} edit this small model too little "
            "(`docs/miniworld.md` has both measured).\n\n"
            "**Try**: another weather, house or "
            "`layout_seed` in *Picture of the miniature world*; another intervention in the editor (click a "
            "concept, *Intervene on this*, type a value the world knows, e.g. "
            + ", ".join(f"{concept} `{value}`" for concept, value in MINIWORLD_SUGGESTIONS)
            + "; the picture's own value changes nothing).\n\n"
            "**Outputs**: *Counterfactual (self-checked)* is the best round by the judge (saved to `output/fmcgm/`); "
            "*Every round, in order* shows what each round rendered; the Self-Checking Edit's report gives each "
            "round's settings and verdicts; the oracle's report says whether each changed concept shows its new value "
            "and each non-descendant kept its own; *Counterfactual graph* draws the intervention (orange), the "
            "descendants that change (blue, dashed) and what stays (grey). *Original* is the picture before the edit.")
    from fmcgm.miniworld import world
    scene = world.scene_from_values(**{k.replace("house_side", "side"): v for k, v in MINIWORLD_SCENE.items()})
    example = (world.graph_dict(scene.values), "weather",
               {"weather": "sunny", **world.propagated_values(scene, "weather", "sunny")})
    return Workflow(title, graph, (
        ("Model and picture", ("1", "2", "3", "18")),
        ("1. Choose the intervention", ("7",)),
        ("2. Propagate it (the world's mechanisms)", ("16", "8")),
        ("3. Render the edit and check it", ("10", "12")), ("Outputs", ("14", "17", "41", "15", "9"))), note,
        example=example, picture=("docs/miniworld_demo.png", None))


MINIWORLD2_CHECKPOINT = "fmcgm-miniworld2-sdxl.safetensors"  # ships in the pack's models/ folder too
# A local edit: do(fire = lit fire) lights the gable window, and its effects lie elsewhere (smoke in the
# sky above the roof, the windows on the walls); 2.5 % of the picture changes.
MINIWORLD2_SCENE = {"weather": "rainy", "fire": "no fire", "house": "yellow house", "door": "green door",
                    "layout_seed": 3}
MINIWORLD2_DO = ("fire", "lit fire")
# Where the self-checking edit starts: the paper's settings. Chosen on other scenes (layout seeds 1 and 2,
# do(fire) and do(door), s_e 8/12/16): with them all four edits passed the oracle in the fewest rounds; s_e 12
# or 16 (what plain CSG needs on this world) left one failing (docs/miniworld2.md).
MINIWORLD2_START = {"edit_guidance": options.EDIT_GUIDANCE, "threshold": options.THRESHOLD}
MINIWORLD2_SUGGESTIONS = (("door", "purple door"), ("weather", "sunny"), ("house", "blue house"))


def miniature_world2() -> Workflow:
    """The second miniature world, where edits are local: its own tiny SDXL (ships with the pack),
    do(fire = lit fire) preset, the self-checking edit judged by the world's whole-region oracle."""
    base = miniature_world()
    graph = {k: dict(v, inputs=dict(v["inputs"])) for k, v in base.graph.items()}
    graph["1"] = node("FMCGMLoadTinySDXLCheckpoint", "Miniature world 2 model (ships with the pack)",
                      ckpt_name=MINIWORLD2_CHECKPOINT)
    graph["2"] = node("FMCGMMiniworld2Scene", "Picture of the miniature world 2", **MINIWORLD2_SCENE)
    # the scene's size can be set up to 1024 px: the limit stands before the VAE as in every picture workflow
    graph["19"] = node("FMCGMPictureSizeLimit", "Picture size limit", image=["2", 0])
    graph["3"]["inputs"]["pixels"] = ["19", 0]
    concept, value = MINIWORLD2_DO
    graph["7"]["inputs"].update(intervene_concept=concept, intervene_value=value)
    graph["12"]["inputs"].update(MINIWORLD2_START)
    graph["12"]["_meta"] = {"title": "Render the edit and check it (judged by the world 2 oracle)"}
    graph["14"]["inputs"]["filename_prefix"] = "fmcgm/miniworld2"
    graph["17"]["_meta"] = {"title": "Does the edit show it? (the world 2 oracle, whole regions)"}
    title = "FM-CGM miniature world 2 (local edits, no downloads)"
    note = (f"## {title}\nA causal edit that should change only a small part of the picture, with nothing to "
            "download: a tiny SDXL trained on the pack's second miniature world, whose text encoders were trained "
            "with it and grounded, so a phrase's attention lies on its concept (weather → sky, ground, the figure's umbrella; fire → chimney smoke and lit windows, which "
            "lie elsewhere than the fire; the house's and the door's colours independent; clutter on the ground "
            "that no caption names). It ships in the pack's `models/` folder.\n\n**Run** (Queue): "
            f"do({concept} = {value}) on a house with no fire: the round gable window should glow, smoke rise "
            "from the chimney and the windows light up, and nothing else change (under 3 % of the picture). The "
            "world's mechanisms give the descendants' new values, the manipulator propagates them, and the "
            "*Self-Checking Edit* renders it with CSG, lets the world's oracle read each round and tries again "
            "where it failed (more guidance for a value not shown, a changed concept held on the original, DDPM "
            "regeneration as the last rounds). It starts at the paper's settings (`edit_guidance` "
            f"{MINIWORLD2_START['edit_guidance']:g}, `threshold` {MINIWORLD2_START['threshold']:g}) and raises what "
            "fails (`docs/miniworld2.md` has the measurements). The oracle reads each concept's whole region and "
            "reports the share of its pixels per value; it does not judge the unnamed clutter, which edits often "
            "lose.\n\n"
            "**Try**: another `layout_seed` (where things stand, the clutter) or other values in *Picture of the "
            "miniature world 2*; another intervention in the editor, e.g. "
            + ", ".join(f"{c} `{v}`" for c, v in MINIWORLD2_SUGGESTIONS)
            + " (the picture's own value changes nothing).\n\n"
            "**Outputs**: *Counterfactual (self-checked)* is the best round by the judge (saved to `output/fmcgm/`); "
            "*Every round, in order* shows what each round rendered; the Self-Checking Edit's report gives each "
            "round's settings and verdicts; the oracle's report gives each concept's shares and says whether each "
            "changed concept shows its new value and each non-descendant kept its own; *Counterfactual graph* "
            "draws the intervention. *Original* is the picture before the edit.")
    from fmcgm.miniworld import world2
    scene = world2.scene_from_values(world2.WORLD.solve(
        {c: MINIWORLD2_SCENE[c] for c in world2.WORLD.roots()}, world2.typical_noise()), MINIWORLD2_SCENE["layout_seed"])
    example = (world2.WORLD.graph_dict(scene.values), concept,
               {concept: value, **world2.WORLD.propagated_values(scene, concept, value)})
    stages = (("Model and picture", ("1", "2", "19", "3", "18")),) + base.stages[1:]
    return Workflow(title, graph, stages, note, example=example, picture=("docs/miniworld2_demo.png", None))


QWEN_TEXT_ENCODER = options.QWEN_TEXT_ENCODER
COMFY_VLM = ("A Qwen3-VL 4B or 8B text encoder in `ComfyUI/models/text_encoders/` (e.g. "
             "`qwen3vl_8b_fp8_scaled.safetensors` from huggingface.co/Comfy-Org/Qwen3-VL), chosen in *Qwen3-VL text "
             "encoder*: the file an image model that uses Qwen3-VL already loads, so its weights sit in memory once. "
             "Needs ComfyUI 0.33 or later.")


def causal_edit_comfy_qwen() -> Workflow:
    """The causal edit with ComfyUI's own Qwen3-VL (Load CLIP) as the VLM: no transformers model."""
    base = causal_edit()
    graph = dict(base.graph)
    graph["16"] = node("CLIPLoader", "Qwen3-VL text encoder", clip_name=QWEN_TEXT_ENCODER, type="stable_diffusion")
    graph["4"] = node("FMCGMComfyQwen3VL", "Qwen3-VL (ComfyUI's own)", clip=["16", 0])
    title = "FM-CGM causal edit (ComfyUI Qwen3-VL)"
    note = (f"## {title}\nEdit a picture causally: do(concept = value) changes that concept and what it causes, "
            "nothing else. The VLM is the Qwen3-VL ComfyUI loads itself (ComfyUI 0.33 or later).\n\n"
            f"{MODELS_NOTE.format(vlm=COMFY_VLM)}\n\n{TWO_RUNS}\n\n{OUTPUTS}")
    # its card draws another intervention than the other two causal edits' (the dialog tells them apart)
    return Workflow(title, graph, (("Models and picture", ("1", "16", "2", "19", "3", "4")),) + base.stages[1:], note,
                    interventions=(("age", {"age": "elderly"}),))


def definitions() -> list[Workflow]:
    return [causal_edit(), causal_edit(vlm="openai"), automatic_interventions(), baselines(), graph_only(),
            miniature_world(), miniature_world2(), causal_edit_comfy_qwen()]


# ----------------------------------------------------------------------------- the frontend side

# Creates the nodes and links of one definition on an empty canvas.
CREATE_JS = """async (wf) => {
    app.graph.clear();
    const made = {};
    for (const [id, n] of wf.nodes) {
        const created = LiteGraph.createNode(n.class_type);
        if (!created) throw new Error(`node type ${n.class_type} is not registered`);
        created.id = Number(id);
        app.graph.add(created);
        if (n.title) created.title = n.title;
        for (const [name, value] of Object.entries(n.widgets)) {
            const w = created.widgets?.find((x) => x.name === name);
            if (!w) throw new Error(`${n.class_type} has no widget ${name}`);
            w.value = value;
            w.callback?.(value);
        }
        // A seed that changed on its own between the two runs would re-read the picture.
        for (const w of created.widgets ?? []) for (const c of w.linkedWidgets ?? []) {
            if (c.name === 'control_after_generate') c.value = 'fixed';
        }
        made[id] = created;
    }
    for (const [source, slot, target, input] of wf.links) {
        const to = made[target];
        const index = to.inputs.findIndex((i) => i.name === input);
        if (index < 0) throw new Error(`${to.type} has no input ${input}`);
        if (!made[source].connect(slot, to, index)) throw new Error(`cannot link ${source}:${slot} -> ${target}.${input}`);
    }
    if (wf.properties) for (const [id, props] of Object.entries(wf.properties)) Object.assign(made[id].properties, props);
}"""

# Places nodes and groups, adds the Note, frames the view; returns the saved workflow.
PLACE_JS = """async (plan) => {
    for (const [id, [x, y, w, h]] of Object.entries(plan.boxes)) {
        const n = app.graph.getNodeById(Number(id));
        n.pos = [x, y];
        n.size = [w, h];
    }
    const note = LiteGraph.createNode('MarkdownNote');
    note.id = plan.note.id;
    app.graph.add(note);
    note.title = 'Read me';
    note.properties.fmcgm_read_me = true;  // web/js/read_me.js draws its text larger
    note.widgets[0].value = plan.note.text;
    note.pos = [plan.note.box[0], plan.note.box[1]];
    note.size = [plan.note.box[2], plan.note.box[3]];
    for (const g of plan.groups) {
        const group = new LiteGraph.LGraphGroup(g.title);
        group.pos = [g.box[0], g.box[1]];
        group.size = [g.box[2], g.box[3]];
        app.graph.add(group);
    }
    app.canvas.ds.scale = plan.view.scale;
    app.canvas.ds.offset = plan.view.offset;
    app.graph.setDirtyCanvas(true, true);
    const saved = JSON.parse(JSON.stringify(app.graph.serialize()));
    saved.extra = {...saved.extra, ds: {scale: plan.view.scale, offset: plan.view.offset}};
    return saved;
}"""


def _widget_inputs(entry: dict, info: dict) -> dict:
    """The definition's literal values for the node's widget inputs (links are made separately)."""
    from fmcgm.workflow_format import is_widget_spec, node_inputs
    specs = dict(node_inputs(info["input"]))
    widgets = {}
    for name, value in entry["inputs"].items():
        if name not in specs:
            raise ValueError(f"{entry['class_type']} has no input {name!r}")
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
            if not is_widget_spec(specs[name]):
                raise ValueError(f"{entry['class_type']}.{name} is a socket; give it a link")
            widgets[name] = value
    return widgets


def _node_height(kind: str, created: float) -> float:
    """Room for what the node will show: its widgets, and a picture or live preview below them."""
    if kind in PICTURE_NODES | LIVE_PREVIEW_NODES:
        created += PREVIEW_ROOM
    return max(created, PICTURE_NODE_HEIGHT) if kind in PICTURE_NODES else created


def _plan(wf: Workflow, sizes: dict[str, list[float]], kinds: dict[str, str],
          text_widths: dict[str, float] | None = None) -> dict:
    """The Note, then one column per stage left to right, each stage a group; each column as
    wide as its widest node needs to draw its title and widgets in full (``text_widths``)."""
    missing = set(wf.graph) - {i for _, ids in wf.stages for i in ids}
    if missing:
        raise ValueError(f"{wf.name}: nodes {sorted(missing)} are in no stage")
    text_widths = text_widths or {}
    boxes, groups = {}, []
    x = NOTE_SIZE[0] + 2 * GROUP_PAD + GAP
    for title, ids in wf.stages:
        width = max(max(max(wf.widths.get(i, sizes[i][0]), text_widths.get(i, 0)) for i in ids), MIN_WIDTH)
        y = 0
        for i in ids:
            height = _node_height(kinds[i], sizes[i][1])
            boxes[i] = [x, y, width, height]
            y += height + GAP
        groups.append({"title": title, "box": [x - GROUP_PAD, -GROUP_TITLE, width + 2 * GROUP_PAD,
                                               y - GAP + GROUP_TITLE + GROUP_PAD]})
        x += width + 2 * GROUP_PAD + GAP
    note_id = max(int(i) for i in wf.graph) + 1
    left, top = -GROUP_PAD, -GROUP_TITLE  # the Note's corner, put near the screen's top left
    return {"boxes": boxes, "groups": groups,
            "note": {"id": note_id, "text": wf.note, "box": [left, top, *NOTE_SIZE]},
            "view": {"scale": VIEW_SCALE, "offset": [90 / VIEW_SCALE - left, 150 / VIEW_SCALE - top]}}


def build(page, wf: Workflow, object_info: dict) -> dict:
    """The saved UI workflow for one definition, made by the frontend in ``page``."""
    nodes, links, properties = [], [], {}
    kinds = {node_id: entry["class_type"] for node_id, entry in wf.graph.items()}
    for node_id, entry in wf.graph.items():
        info = object_info[entry["class_type"]]
        nodes.append([node_id, {"class_type": entry["class_type"], "title": entry.get("_meta", {}).get("title"),
                                "widgets": _widget_inputs(entry, info)}])
        for name, value in entry["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                links.append([value[0], value[1], node_id, name])
        if entry["class_type"] == "CheckpointLoaderSimple":  # lets the frontend offer the download
            properties[node_id] = {"models": MODELS}
    page.evaluate(CREATE_JS, {"nodes": nodes, "links": links, "properties": properties})
    page.wait_for_timeout(2000)  # an editor whose incoming graph the backend knows grows to show it
    sizes = page.evaluate("() => Object.fromEntries(app.graph.nodes.map(n => [n.id, [n.size[0], n.size[1]]]))")
    from fmcgm.runner.frontend import TEXT_NEEDS_JS
    # Measured in this frontend; others draw titles a little larger (1.58.1: about 1 % wider):
    # TEXT_HEADROOM more, in whole multiples of 8 px.
    text_widths = {str(k): 8 * -(-max(need for _, need in needs) * TEXT_HEADROOM // 8)
                   for k, needs in page.evaluate(TEXT_NEEDS_JS).items()}
    return page.evaluate(PLACE_JS, _plan(wf, sizes, kinds, text_widths))


def thumbnail(wf: Workflow, path: Path) -> None:
    """The Templates dialog's square card: the title, the workflow's own picture (_thumbnail_panel),
    and its stages. The top band stays empty: frontend 1.58 lays a "Node graph" badge over the
    card's top-left corner."""
    from PIL import Image, ImageDraw, ImageFont

    drawing = _thumbnail_panel(wf, THUMBNAIL - 40, 250)
    card = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (24, 27, 33))
    draw = ImageDraw.Draw(card)
    font = _thumbnail_font(ImageFont, bold=True, size=28)
    lines = [""]  # the title, wrapped to the card (the dialog shows it about 200 px wide)
    for word in wf.name.split():
        trial = f"{lines[-1]} {word}".strip()
        if draw.textlength(trial, font=font) <= THUMBNAIL - 40 or not lines[-1]:
            lines[-1] = trial
        else:
            lines.append(word)
    draw.multiline_text((20, TOP_BAND), "\n".join(lines[:2]), font=font, fill=(240, 240, 240), spacing=4)
    card.paste(Image.fromarray(drawing), (20 + (THUMBNAIL - 40 - drawing.shape[1]) // 2, TOP_BAND + 70))
    small = _thumbnail_font(ImageFont, bold=False, size=17)
    y = TOP_BAND + 70 + 250 + 10
    for title, _ in wf.stages[:6]:
        draw.text((24, y), "\u2022 " + title, font=small, fill=(200, 205, 215))
        y += 19
    card.save(path, quality=90)


def _thumbnail_panel(wf: Workflow, width: int, height: int):
    """The card's picture (RGB array at most width x height): the workflow's result where there is
    one to show, else its causal graph with the intervention(s) it makes."""
    import numpy as np
    from PIL import Image

    from fmcgm.graph import CausalGraph
    from fmcgm.render import render_graph
    if wf.picture:
        path, crop = wf.picture
        picture = Image.open(REPO / path).convert("RGB")
        picture = picture.crop(crop) if crop else picture
        picture.thumbnail((width, height))
        return np.asarray(picture)
    example = wf.example or (GRAPH_ONLY_EXAMPLE, "weather", {"weather": "sunny", "hair": "dry", "umbrella": "closed"})
    shown = wf.interventions or ((example[1], example[2]),)
    graph = CausalGraph.from_dict(example[0])
    drawings = [render_graph(graph, concept, values, width=width // len(shown), height=height).image
                for concept, values in shown]
    return np.concatenate(drawings, axis=1)


def _thumbnail_font(image_font, bold: bool, size: int):
    """DejaVu Sans, which matplotlib bundles (the graph drawings use it too)."""
    import matplotlib
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return image_font.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def main() -> None:
    from fmcgm.runner import frontend
    with tempfile.TemporaryDirectory() as tmp:
        server = frontend.start_server(Path(tmp))
        try:
            object_info = server.client.get_json("/object_info")
            with frontend.launched_browser() as browser:
                page = frontend.Page(browser, server.client).open()
                WORKFLOWS.mkdir(exist_ok=True)
                keep = set()
                for wf in definitions():
                    saved = build(page.page, wf, object_info)
                    target = WORKFLOWS / f"{wf.name}.json"
                    target.write_text(json.dumps(saved, indent=1, ensure_ascii=False) + "\n")
                    thumbnail(wf, target.with_suffix(".jpg"))
                    keep |= {target.name, target.with_suffix(".jpg").name}
                    print(f"wrote {target.relative_to(REPO)} and its thumbnail")
                if page.page_errors or page.console_errors:
                    raise SystemExit(f"the frontend complained: {page.page_errors + page.console_errors}")
                for stale in WORKFLOWS.iterdir():
                    if stale.name not in keep:
                        stale.unlink()
                        print(f"removed {stale.relative_to(REPO)}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
