"""The paper's quantitative evaluation (Sec. 6, Table 1): VLM-Eff (effectiveness) and LPIPS (minimality).

VLM-Eff: a VLM judges whether the edited image shows each counterfactual concept value (the
intervened concept's new value and every changed descendant's new value); the score of one
counterfactual is the fraction judged present. One request per image lists all concepts and
asks for ``{"verdicts": {"<concept>": true|false, ...}}`` under a JSON schema whose object
has exactly one required boolean per concept and no other property. We chose this over the
array form ``[{"concept": <enum>, "present": bool}]`` because an object with ``required`` +
``additionalProperties: false`` enforces exact coverage under constrained decoding (xgrammar)
and OpenAI strict mode alike, where an array of enum items can repeat one concept and skip
another; and over one request per concept because it is one image encoding instead of N.
The parser still reads the array form (and yes/no strings, aliases, wrong case) from models
that ignore the schema. A concept the model did not judge is reported as unjudged and left
out of the score, never an exception.

For information only, the same request can list the non-descendants (the invariant concepts)
with their factual values: the fraction still judged present is the "invariance" score (the
paper's minimality intent). It is kept apart from VLM-Eff; the judge is not told which
concepts were edited. Descendants the intervention left unchanged are in neither list.

LPIPS: the ``lpips`` package's VGG variant (its linear layers ship in its wheel) on the
torchvision VGG16 ImageNet backbone, loaded from a local ``vgg16-397923af.pth`` (never
downloaded at run time). Lower is a smaller edit. An edited image of another size than the
original is resized (bilinear, antialiased) to the original's size first, and that is reported.

Importable without ComfyUI; torch, torchvision and lpips are imported when used.
"""
from __future__ import annotations

import json
import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from .graph import concept_key
from .parsing import ModelAnswerError, answer_excerpt, extract_json, field_key
from .prompts import object_schema
from .roles import Role
from .vlm.base import TokenCallback
from .vlm_calls import Sampling, build_request


VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LPIPS_MIN_SIDE = 16  # VGG16 pools four times before its last LPIPS layer

EVAL_SYSTEM_PROMPT = (
    "You are a careful visual judge. You look at an image and decide, for each listed concept, whether the "
    "image shows that concept with the stated value. Always answer with a single JSON object in the requested "
    "format and nothing else."
)


# ================================================================ VLM-Eff: prompt and schema

def effectiveness_schema(names: Sequence[str]) -> dict[str, Any]:
    """``{"verdicts": {name: boolean, ...}}``: exactly one verdict per concept, nothing else."""
    return object_schema({"verdicts": object_schema({name: {"type": "boolean"} for name in names})})


def effectiveness_prompt(items: Sequence[tuple[str, str]]) -> str:
    """The judge's question for (concept name, value) pairs, in the order given."""
    lines = "\n".join(f"- {json.dumps(name, ensure_ascii=False)} = {json.dumps(value, ensure_ascii=False)}"
                      for name, value in items)
    example = "{" + ", ".join(f"{json.dumps(name, ensure_ascii=False)}: true or false" for name, _ in items) + "}"
    return (
        "Look at this image and judge each concept below independently (name = value).\n"
        f"{lines}\n"
        "For each concept answer true if the image clearly shows that concept with exactly this value, and false "
        "if it shows a different value or the concept cannot be seen. Judge only what is visible in the image.\n"
        f"Answer with JSON only, in this format: {{\"verdicts\": {example}}}"
    )


# ================================================================ VLM-Eff: results

@dataclass(frozen=True)
class Verdict:
    concept: str
    value: str
    role: Role  # INTERVENED, DESCENDANT (changed) or INVARIANT (non-descendant, factual value)
    present: Optional[bool]  # None: the model gave no usable verdict

    @property
    def mark(self) -> str:
        return {True: "yes", False: "no", None: "unjudged"}[self.present]


def _fraction(verdicts: Sequence[Verdict]) -> Optional[float]:
    judged = [v.present for v in verdicts if v.present is not None]
    return sum(judged) / len(judged) if judged else None


def format_score(score: Optional[float], verdicts: Sequence[Verdict] = ()) -> str:
    if score is None:
        return "n/a"
    judged = [v for v in verdicts if v.present is not None]
    count = f" ({sum(v.present for v in judged)}/{len(judged)})" if verdicts else ""
    return f"{score:.3f}{count}"


@dataclass(frozen=True)
class EffectivenessResult:
    """VLM-Eff of one counterfactual image.

    ``score``: fraction of the counterfactual values (intervened + changed descendants) judged
    present, over the judged ones; None when none was judged. ``invariance``: the same over the
    non-descendants' factual values (None when not asked or none judged); separate from ``score``.
    """

    verdicts: tuple[Verdict, ...]
    invariance_verdicts: tuple[Verdict, ...] = ()
    repairs: tuple[str, ...] = ()
    answer: str = ""

    @property
    def score(self) -> Optional[float]:
        return _fraction(self.verdicts)

    @property
    def invariance(self) -> Optional[float]:
        return _fraction(self.invariance_verdicts)

    @property
    def unjudged(self) -> tuple[str, ...]:
        return tuple(v.concept for v in self.verdicts if v.present is None)

    @property
    def invariance_unjudged(self) -> tuple[str, ...]:
        return tuple(v.concept for v in self.invariance_verdicts if v.present is None)

    def report_lines(self) -> list[str]:
        lines = [f"VLM-Eff {format_score(self.score, self.verdicts)}: "
                 + "; ".join(f"{v.concept} = {v.value}: {v.mark}" for v in self.verdicts)]
        if self.unjudged:
            lines.append(f"unjudged (left out of VLM-Eff): {', '.join(self.unjudged)}")
        if self.invariance_verdicts:
            lines.append(f"invariance (info, not VLM-Eff) {format_score(self.invariance, self.invariance_verdicts)}: "
                         + "; ".join(f"{v.concept} = {v.value}: {v.mark}" for v in self.invariance_verdicts))
        lines += [f"repair: {r}" for r in self.repairs]
        return lines

    def to_dict(self) -> dict[str, Any]:
        def rows(verdicts):
            return [{"concept": v.concept, "value": v.value, "role": str(v.role), "present": v.present}
                    for v in verdicts]
        return {"score": self.score, "verdicts": rows(self.verdicts), "unjudged": list(self.unjudged),
                "invariance": self.invariance, "invariance_verdicts": rows(self.invariance_verdicts),
                "repairs": list(self.repairs)}


def counterfactual_targets(counterfactual) -> list[tuple[str, str, str]]:
    """(concept, value, role) the edited image should show: the intervention, then changed descendants."""
    return [(counterfactual.concept, counterfactual.value, Role.INTERVENED),
            *((name, counterfactual.descendant_values[name], Role.DESCENDANT)
              for name in counterfactual.changed)]


def invariant_targets(counterfactual) -> list[tuple[str, str, str]]:
    """(concept, factual value, Role.INVARIANT) for every non-descendant of the intervened concept."""
    graph = counterfactual.graph
    return [(name, graph.concept(name).value, Role.INVARIANT)
            for name in graph.non_descendants(counterfactual.concept)]


def vlm_effectiveness(backend, image, counterfactual, *, invariance: bool = True, temperature: float = 0.1,
                      max_new_tokens: int = 1024, seed: int = 0, enable_thinking: bool = False,
                      on_token: Optional[TokenCallback] = None) -> EffectivenessResult:
    """Ask ``backend`` (a ``VLMBackend``) which counterfactual values ``image`` (PIL, the edited
    picture) shows. Backend errors (and cancellation through ``on_token``) propagate; a malformed
    answer does not: what cannot be read is reported as unjudged."""
    targets = counterfactual_targets(counterfactual)
    if invariance:
        targets += invariant_targets(counterfactual)
    request = build_request(effectiveness_prompt([(n, v) for n, v, _ in targets]), image,
                            effectiveness_schema([n for n, _, _ in targets]),
                            Sampling(temperature, max_new_tokens, seed, enable_thinking), system=EVAL_SYSTEM_PROMPT)
    answer = backend.generate(request, on_token)
    return effectiveness_from_answer(targets, answer)


def effectiveness_from_answer(targets: Sequence[tuple[str, str, str]], answer: Any) -> EffectivenessResult:
    """Score an answer for (concept, value, role) targets; never raises on a bad answer."""
    found, repairs = read_verdicts(answer, [name for name, _, _ in targets])
    verdicts = [Verdict(name, value, role, found.get(name)) for name, value, role in targets]
    missing = [v.concept for v in verdicts if v.present is None]
    if missing and not any(r.startswith("the answer could not be read") for r in repairs):
        repairs.append(f"no verdict for {', '.join(map(repr, missing))}: reported as unjudged")
    return EffectivenessResult(tuple(v for v in verdicts if v.role != Role.INVARIANT),
                               tuple(v for v in verdicts if v.role == Role.INVARIANT), tuple(repairs),
                               answer if isinstance(answer, str) else repr(answer))


# ---------------------------------------------------------------- reading the verdicts

_VERDICTS_KEYS = ("verdicts", "verdict", "judgments", "judgements", "results", "answers", "evaluations",
                  "concepts", "answer")
_NAME_KEYS = ("concept", "name", "concept_name", "attribute", "variable", "key")
_PRESENT_KEYS = ("present", "is_present", "contains", "contained", "visible", "shown", "verdict", "answer",
                 "judgment", "result", "value", "correct")
_TRUE = {"true", "yes", "y", "present", "1", "visible", "shown", "correct", "contains", "contained"}
_FALSE = {"false", "no", "n", "absent", "0", "not present", "not visible", "missing", "incorrect", "none"}


def as_verdict(value: Any) -> Optional[bool]:
    """A model-given verdict as a bool: true/false, yes/no, 1/0; None if it is none of these."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = " ".join(value.strip().strip(".!").casefold().split())
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    if isinstance(value, Mapping):  # {"present": true, ...} under a concept key
        for key, inner in value.items():
            if field_key(key) in _PRESENT_KEYS:
                return as_verdict(inner)
    return None


def _first(record: Mapping, keys: Sequence[str]) -> Any:
    by_key = {field_key(k): v for k, v in record.items()}
    return next((by_key[k] for k in keys if k in by_key), None)


def _pairs(value: Any, repairs: list[str]) -> list[tuple[Any, Any]]:
    """(name, raw verdict) pairs from a mapping {name: verdict} or a list of {concept, present} records."""
    if isinstance(value, Mapping):
        return list(value.items())
    pairs = []
    if isinstance(value, list):
        for number, item in enumerate(value, 1):
            if isinstance(item, Mapping) and _first(item, _NAME_KEYS) is not None:
                pairs.append((_first(item, _NAME_KEYS), _first(item, _PRESENT_KEYS)))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                pairs.append((item[0], item[1]))
            else:
                repairs.append(f"verdict #{number} is not {{\"concept\": ..., \"present\": ...}}; ignored")
    return pairs


def read_verdicts(answer: Any, names: Sequence[str]) -> tuple[dict[str, bool], list[str]]:
    """{concept name: present} for the ``names`` the answer judged, and what was repaired or ignored."""
    repairs: list[str] = []
    try:
        data = extract_json(answer, prefer=lambda d: _first(d, _VERDICTS_KEYS) is not None)
    except ModelAnswerError as error:
        return {}, [f"the answer could not be read ({error.reason}): {answer_excerpt(error.answer)!r}"]
    container = data
    if isinstance(data, Mapping):
        inner = _first(data, _VERDICTS_KEYS)
        if isinstance(inner, (Mapping, list)):
            container = inner
        else:
            repairs.append("the answer has no 'verdicts' object; read its top level as the verdicts")
    if isinstance(container, list) and not any(isinstance(item, Mapping) for item in container) \
            and not any(isinstance(item, (list, tuple)) for item in container):
        return {}, [f"the answer could not be read (a list without verdicts): {answer_excerpt(str(answer))!r}"]
    by_key = {concept_key(n): n for n in names}
    found: dict[str, bool] = {}
    conflicting: set[str] = set()
    for raw_name, raw_verdict in _pairs(container, repairs):
        name = by_key.get(concept_key(str(raw_name))) if isinstance(raw_name, (str, int, float)) else None
        if name is None:
            repairs.append(f"verdict for unknown concept {str(raw_name)[:60]!r} ignored")
            continue
        verdict = as_verdict(raw_verdict)
        if verdict is None:
            repairs.append(f"verdict for {name!r} is {str(raw_verdict)[:60]!r}, not true/false: unjudged")
            continue
        if str(raw_name) != name:
            repairs.append(f"concept {str(raw_name)[:60]!r} read as {name!r}")
        if name in found and found[name] != verdict:
            conflicting.add(name)
        found.setdefault(name, verdict)
    for name in sorted(conflicting):
        del found[name]
        repairs.append(f"conflicting verdicts for {name!r}: unjudged")
    return found, repairs


def mean_score(values: Iterable[Optional[float]]) -> float:
    """Mean of the measured values; NaN when none was measured."""
    measured = [v for v in values if v is not None and not math.isnan(v)]
    return sum(measured) / len(measured) if measured else math.nan


# ================================================================ LPIPS

class LPIPSWeightsError(FileNotFoundError):
    """The VGG16 backbone weights are missing or unusable; the message says what to do."""


def default_weight_dirs(model_dirs: Sequence[os.PathLike | str] = ()) -> list[Path]:
    """Where ``find_vgg16_weights`` looks: the given model folders, then torch hub's checkpoint cache."""
    import torch
    return [*(Path(d) for d in model_dirs), Path(torch.hub.get_dir()) / "checkpoints"]


def find_vgg16_weights(dirs: Sequence[os.PathLike | str]) -> Path:
    """The first ``vgg16-397923af.pth`` in ``dirs``; LPIPSWeightsError with download instructions otherwise."""
    for directory in dirs:
        candidate = Path(directory) / VGG16_FILE
        if candidate.is_file():
            return candidate
    raise LPIPSWeightsError(missing_weights_message(dirs))


def missing_weights_message(dirs: Sequence[os.PathLike | str]) -> str:
    places = [str(d) for d in dirs]
    first = places[0] if places else "ComfyUI/models/lpips"
    return (f"LPIPS (VGG) needs the torchvision VGG16 ImageNet weights {VGG16_FILE} (528 MB), which this pack never "
            f"downloads at run time. Download {VGG16_URL} and put it in {first}"
            + (f" (or {places[-1]})" if len(places) > 1 else "")
            + f". Searched: {', '.join(places) or '(no folder)'}. Or choose '(none: skip LPIPS)'.")


def load_vgg16_features(path: os.PathLike | str) -> dict[str, Any]:
    """The convolutional part (``features.*``) of a torchvision vgg16 state_dict file, checked."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise LPIPSWeightsError(f"LPIPS weights file {path} does not exist. {missing_weights_message([path.parent])}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated download, or not a torch file at all
        raise LPIPSWeightsError(f"{path} could not be read as a torch state_dict ({type(error).__name__}: "
                                f"{error}); download {VGG16_URL} again") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise LPIPSWeightsError(f"{path} holds a {type(state).__name__}, not a vgg16 state_dict; use {VGG16_URL}")
    features = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
    if not features:
        hint = (" It looks like the lpips package's own linear-layer file (lin0..lin4), which is not the backbone."
                if any(str(k).startswith("lin") for k in state) else "")
        raise LPIPSWeightsError(f"{path} has no 'features.*' tensors, so it is not torchvision's vgg16 state_dict."
                                f"{hint} Use {VGG16_URL} ({VGG16_FILE}).")
    return features


class LPIPSMetric:
    """LPIPS with the VGG backbone: the ``lpips`` package's model, backbone weights from a local file."""

    def __init__(self, weights_path: os.PathLike | str, device: Any = "cpu"):
        import torch
        try:
            import lpips
        except ImportError:
            raise ImportError("LPIPS needs the 'lpips' package (pip install lpips, in ComfyUI's Python); or choose "
                              "'(none: skip LPIPS)'") from None

        self.weights_path = Path(weights_path)
        features = load_vgg16_features(self.weights_path)
        # Built on the meta device: no random init (and no 500 MB classifier) before the real weights arrive.
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lpips passes torchvision's deprecated ``pretrained=False``
            model = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
        state: dict[str, Any] = {}
        missing = []
        for key in model.net.state_dict():
            source = "features." + key.split(".", 1)[1]  # "slice2.5.weight" -> "features.5.weight"
            if source in features:
                state["net." + key] = features[source].float()
            else:
                missing.append(source)
        if missing:
            raise LPIPSWeightsError(f"{self.weights_path} lacks {', '.join(missing[:4])}"
                                    f"{' ...' if len(missing) > 4 else ''}: not a vgg16 state_dict; use {VGG16_URL}")
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        wrong = [k for k, v in state.items() if tuple(v.shape) != shapes[k]]
        if wrong:
            raise LPIPSWeightsError(f"{self.weights_path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, "
                                    f"VGG16 needs {shapes[wrong[0]]}; use {VGG16_URL}")
        linear = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu",
                            weights_only=True)
        for index in range(5):
            weight = linear[f"lin{index}.model.1.weight"]
            state[f"lin{index}.model.1.weight"] = weight
            state[f"lins.{index}.model.1.weight"] = weight
        for key, value in model.scaling_layer.state_dict().items():
            state[f"scaling_layer.{key}"] = value.clone()
        model.load_state_dict(state, strict=True, assign=True)
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)

    def to(self, device: Any) -> "LPIPSMetric":
        import torch
        self.model.to(device)
        self.device = torch.device(device)
        return self

    def distance(self, original: Any, edited: Any) -> float:
        """LPIPS between two single images (PIL, CHW/HWC tensors in [0, 1])."""
        return self.distances([original], [edited]).values[0]

    def distances(self, originals: Any, edited: Any) -> "LPIPSResult":
        """LPIPS per edited image against its original (one original is broadcast to every edit).

        Images: PIL images, a ComfyUI IMAGE tensor (B, H, W, C in [0, 1]) or a list of either.
        """
        import torch
        import torch.nn.functional as F

        sources, edits = image_list(originals), image_list(edited)
        if not edits:
            raise ValueError("LPIPS: no edited image")
        if len(sources) not in (1, len(edits)):
            raise ValueError(f"LPIPS: {len(sources)} original images for {len(edits)} edited images; give one "
                             "original, or one per edited image")
        values, notes = [], []
        with torch.inference_mode():
            for index, edit in enumerate(edits):
                source = sources[index if len(sources) > 1 else 0]
                height, width = source.shape[-2:]
                if min(height, width) < LPIPS_MIN_SIDE:
                    raise ValueError(f"LPIPS: the original image is {width}x{height}; VGG LPIPS needs at least "
                                     f"{LPIPS_MIN_SIDE} pixels on each side")
                if edit.shape[-2:] != source.shape[-2:]:
                    notes.append(f"image {index}: edited {edit.shape[-1]}x{edit.shape[-2]} resized to the "
                                 f"original's {width}x{height} (bilinear, antialiased) for LPIPS")
                    edit = F.interpolate(edit[None], size=(height, width), mode="bilinear", align_corners=False,
                                         antialias=True)[0].clamp(0, 1)
                pair = torch.stack([source, edit]).to(self.device, torch.float32) * 2 - 1
                values.append(float(self.model(pair[:1], pair[1:]).flatten()[0]))
        return LPIPSResult(tuple(values), tuple(notes))


@dataclass(frozen=True)
class LPIPSResult:
    values: tuple[float, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def mean(self) -> float:
        return mean_score(self.values)


def image_list(images: Any) -> list:
    """PIL image(s) or image tensor(s) -> list of float CHW RGB tensors in [0, 1] (CPU).

    A 4-D tensor is a ComfyUI batch (B, H, W, C); a 3-D one is HWC when its last dimension is
    1, 3 or 4, else CHW. Alpha is dropped, grey is repeated to RGB.
    """
    import torch

    if isinstance(images, (list, tuple)):
        return [image for item in images for image in image_list(item)]
    if isinstance(images, torch.Tensor):
        tensor = images.detach().to("cpu", torch.float32)
        if tensor.ndim == 4:
            return [_rgb(t.permute(2, 0, 1)) for t in tensor]
        if tensor.ndim == 3:
            return [_rgb(tensor.permute(2, 0, 1) if tensor.shape[-1] in (1, 3, 4) else tensor)]
        raise ValueError(f"an image tensor must have 3 or 4 dimensions, got shape {tuple(tensor.shape)}")
    if hasattr(images, "convert") and hasattr(images, "size"):  # PIL
        import numpy as np
        array = np.asarray(images.convert("RGB"), dtype=np.float32) / 255.0
        return [torch.from_numpy(array).permute(2, 0, 1).contiguous()]
    raise TypeError(f"expected PIL images or image tensors, got {type(images).__name__}")


def _rgb(chw):
    if chw.shape[0] == 1:
        chw = chw.repeat(3, 1, 1)
    return chw[:3].clamp(0, 1).contiguous()


_CACHE: dict[tuple, LPIPSMetric] = {}
_CACHE_LOCK = threading.Lock()


def load_lpips(weights_path: os.PathLike | str, device: Any = "cpu") -> LPIPSMetric:
    """An ``LPIPSMetric`` for the file, cached (one at a time) while the file is unchanged."""
    path = Path(weights_path).resolve()
    try:
        stat = path.stat()
    except OSError:
        raise LPIPSWeightsError(f"LPIPS weights file {path} does not exist. "
                                f"{missing_weights_message([path.parent])}") from None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        metric = _CACHE.get(key)
        if metric is None:
            metric = LPIPSMetric(path, device="cpu")
            _CACHE.clear()
            _CACHE[key] = metric
        return metric.to(device)


# ================================================================ both metrics over a batch

@dataclass(frozen=True)
class ImageEvaluation:
    """The metrics of one edited image (None: not measured)."""

    index: int
    counterfactual: Any
    effectiveness: Optional[EffectivenessResult] = None
    lpips: Optional[float] = None


@dataclass(frozen=True)
class EvaluationSummary:
    rows: tuple[ImageEvaluation, ...]
    notes: tuple[str, ...] = ()

    @property
    def vlm_eff(self) -> float:
        """Mean VLM-Eff over the counterfactuals that got a score; NaN if none (no VLM, nothing judged)."""
        return mean_score(r.effectiveness.score for r in self.rows if r.effectiveness is not None)

    @property
    def lpips(self) -> float:
        """Mean LPIPS over the edited images; NaN when LPIPS was skipped."""
        return mean_score(r.lpips for r in self.rows)

    @property
    def invariance(self) -> float:
        return mean_score(r.effectiveness.invariance for r in self.rows if r.effectiveness is not None)

    def report(self) -> str:
        def number(value: float, digits: int) -> str:
            return "n/a" if math.isnan(value) else f"{value:.{digits}f}"

        header = f"{'#':<4} {'intervention':<34} {'VLM-Eff':<14} {'LPIPS':<8} invariance (info)"
        lines = [header, "-" * len(header)]
        for row in self.rows:
            cf = row.counterfactual
            name = f"do({cf.concept} = {cf.value})"
            eff = row.effectiveness
            lines.append(f"{row.index:<4} {name[:34]:<34} "
                         f"{format_score(eff.score, eff.verdicts) if eff else 'n/a':<14} "
                         f"{'n/a' if row.lpips is None else f'{row.lpips:.4f}':<8} "
                         f"{format_score(eff.invariance, eff.invariance_verdicts) if eff else 'n/a'}")
        lines.append(f"{'mean':<4} {'':<34} {number(self.vlm_eff, 3):<14} {number(self.lpips, 4):<8} "
                     f"{number(self.invariance, 3)}")
        details = []
        for row in self.rows:
            if row.effectiveness is not None:
                details += [f"image {row.index}: {line}" for line in row.effectiveness.report_lines()]
        return "\n".join([*self.notes, "", *lines, *([""] + details if details else [])]).strip("\n")


def _pil(chw) -> Any:
    from PIL import Image
    array = (chw.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype("uint8")
    return Image.fromarray(array)


def evaluate_counterfactuals(originals: Any, edited: Any, counterfactuals: Sequence[Any], *, backend=None,
                             lpips_metric: Optional[LPIPSMetric] = None, invariance: bool = True,
                             temperature: float = 0.1, max_new_tokens: int = 1024, seed: int = 0,
                             on_token: Optional[TokenCallback] = None) -> EvaluationSummary:
    """VLM-Eff (if ``backend``) and LPIPS (if ``lpips_metric``) of edited image i for counterfactual i.

    ``edited`` holds one image per counterfactual, in order; ``originals`` one image (broadcast)
    or one per edited image. Images as for ``image_list``. Mismatched counts raise ValueError
    naming the inputs (original, edited, counterfactual).
    """
    counterfactuals = list(counterfactuals)
    sources, edits = image_list(originals), image_list(edited)
    if not counterfactuals:
        raise ValueError("counterfactual: no counterfactual arrived; connect the Concept Manipulator's output")
    if len(edits) != len(counterfactuals):
        raise ValueError(f"edited: {len(edits)} edited image(s) for {len(counterfactuals)} counterfactual(s); the "
                         "edited batch must hold one picture per counterfactual, in the same order (as the CSG "
                         "Sampler outputs them)")
    if len(sources) not in (1, len(edits)):
        raise ValueError(f"original: {len(sources)} original image(s) for {len(edits)} edited image(s); connect one "
                         "original picture (used for every edit) or one per edited image")
    notes = [f"{len(edits)} counterfactual image(s)"]
    distances: list[Optional[float]] = [None] * len(edits)
    if lpips_metric is not None:
        result = lpips_metric.distances(sources, edits)
        distances = list(result.values)
        notes.append(f"LPIPS (VGG, lower = smaller edit): backbone weights {lpips_metric.weights_path.name}")
        notes += result.notes
    else:
        notes.append("LPIPS skipped (no weights chosen)")
    if backend is not None:
        describe = getattr(backend, "describe", None)
        notes.append(f"VLM-Eff judge: {describe() if callable(describe) else type(backend).__name__}")
    else:
        notes.append("VLM-Eff skipped (no VLM connected)")
    rows = []
    for index, (cf, edit) in enumerate(zip(counterfactuals, edits)):
        effectiveness = None
        if backend is not None:
            effectiveness = vlm_effectiveness(backend, _pil(edit), cf, invariance=invariance,
                                              temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                                              on_token=on_token)
        rows.append(ImageEvaluation(index, cf, effectiveness, distances[index]))
    return EvaluationSummary(tuple(rows), tuple(notes))
