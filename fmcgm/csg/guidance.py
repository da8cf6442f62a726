"""Edit concepts, counterfactual batches, and the CSG guidance combination.

A *counterfactual* is the ordered list of edit concepts of one intervention: the intervened
concept first, then every descendant whose value changed (FM-CGM Sec. 5.3). CSG adds,
per concept j (eqs. 9-12, LEDITS++ eq. 12):

    g_j   = s_j * (eps(x, c_j) - eps(x))            (s_j < 0 for a reversed concept)
    mu_j  = M1_j * M2_j                             (intersect masks; see ``masks``)
    gamma = sum_j mu_j * g_j   over concepts past warm-up and before cool-down
    eps~  = eps(x) + gamma

With a single concept this is exactly single-concept LEDITS++.

Optional invariant protection (this pack's addition to the paper's method, off by default): a counterfactual may carry "protect"
concepts, the factual phrases of the intervened concept's non-descendants. They add batch rows
whose only use is their cross-attention mask M1_k (threshold lambda_p); with P = max_k M1_k every
edited concept's mask becomes mu_j * (1 - strength * P). Without protect concepts, or with
strength 0, nothing is added and the results are unchanged.

Several counterfactuals of one image can be edited *as one batch* (a ``Plan``): concept j of
every counterfactual shares "slot" j, a CONDITIONING whose rows are the counterfactuals' j-th
concepts, so one UNet call per step evaluates [uncond, slot 0, slot 1, ...] for all of them at
once (rows of a counterfactual with fewer concepts are padded and carry no guidance).
``batch_groups`` says which counterfactuals share a batch without padding.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import masks as masks_mod
from .errors import CSGInputError
from ..options import ATTENTION_TOKENS, EDIT_GUIDANCE, THRESHOLD
from ..roles import EDIT_ROLES, Role

ROLES = EDIT_ROLES
PROTECT = "protect"
NEVER = 1 << 30


@dataclass(frozen=True, eq=False)
class EditConcept:
    """One edit prompt with its LEDITS++ parameters (paper defaults)."""
    conditioning: list                 # ComfyUI CONDITIONING of the phrase
    n_tokens: int | None = None        # real tokens of the prompt (None: unknown, all but the start token)
    text: str | None = None
    role: str = Role.INTERVENED
    scale: float = EDIT_GUIDANCE       # s_e, edit guidance scale
    threshold: float = THRESHOLD       # lambda, mask quantile
    warmup: int = 10                   # no guidance for steps < warmup
    cooldown: int | None = None        # no guidance for steps >= cooldown (None: never stops)
    reverse: bool = False              # guide away from the concept

    def key(self):
        if self.text is not None:
            return ("text", self.text.strip().lower())
        c = self.conditioning[0][0]
        return ("tensor", id(c))


@dataclass(frozen=True, eq=False)
class CounterfactualEdit:
    concepts: tuple
    label: str = ""
    protect: tuple = ()                # EditConcepts (role "protect") whose M1 masks suppress the edits
    protect_strength: float = 0.0      # 0 = off (no extra rows), 1 = no edit where a protect mask is on

    def with_protection(self, protect, strength: float) -> "CounterfactualEdit":
        return CounterfactualEdit(self.concepts, self.label, tuple(protect), float(strength))


@dataclass(frozen=True, eq=False)
class EditSet:
    """The ``FMCGM_EDITS`` socket payload: one or more counterfactuals to render from one inversion."""
    counterfactuals: tuple = ()

    def add_concept(self, concept: EditConcept, new_counterfactual: bool = False, label: str = "") -> "EditSet":
        cfs = list(self.counterfactuals)
        if new_counterfactual or not cfs:
            cfs.append(CounterfactualEdit((concept,), label))
        else:
            last = cfs[-1]
            cfs[-1] = CounterfactualEdit(last.concepts + (concept,), last.label or label, last.protect,
                                     last.protect_strength)
        return EditSet(tuple(cfs))

    def extend(self, other: "EditSet") -> "EditSet":
        return EditSet(self.counterfactuals + other.counterfactuals)

    def describe(self) -> str:
        parts = []
        for k, cf in enumerate(self.counterfactuals):
            names = [c.text if c.text is not None else f"<cond {i}>" for i, c in enumerate(cf.concepts)]
            text = f"{cf.label or k}: " + ", ".join(names)
            if cf.protect and cf.protect_strength > 0:
                text += f" (protecting {', '.join(c.text or '?' for c in cf.protect)} at {cf.protect_strength:g})"
            parts.append(text)
        return "; ".join(parts)


def dedupe(concepts) -> tuple:
    """Identical phrases are merged: diffusers would reuse the first one's maps and apply
    guidance twice."""
    seen, out = set(), []
    for c in concepts:
        k = c.key()
        if k in seen:
            continue
        seen.add(k)
        out.append(c)
    return tuple(out)


@dataclass(eq=False)
class Slot:
    conditioning: list
    present: torch.Tensor      # [R] bool
    scale: torch.Tensor        # [R] signed edit scale (0 where absent)
    threshold: torch.Tensor    # [R]
    warmup: torch.Tensor       # [R] long
    cooldown: torch.Tensor     # [R] long
    n_tokens: torch.Tensor     # [R] long
    labels: list = field(default_factory=list)

    def active(self, step: int) -> torch.Tensor:
        return self.present & (step >= self.warmup) & (step < self.cooldown)

    def needs_maps(self, rows: torch.Tensor) -> bool:
        """Whether an attention mask M1 of ``rows`` ([R] bool) needs captured maps: at threshold 0
        the mask keeps every cell whatever the maps say."""
        return bool((rows & (self.threshold > 0)).any())


@dataclass(eq=False)
class Plan:
    slots: list
    counterfactuals: int
    batch: int                 # images in the inversion
    context_length: int = 77
    protect: list = field(default_factory=list)   # Slots of protect concepts (empty: protection off)
    protect_strength: torch.Tensor | None = None  # [R] strength per row (only with protect slots)

    @property
    def rows(self) -> int:
        return self.counterfactuals * self.batch


def _single_entry(cond: list, name: str):
    if not isinstance(cond, list) or len(cond) == 0:
        raise CSGInputError(name, "is not a CONDITIONING (expected the output of a text encoder)")
    if len(cond) != 1:
        raise CSGInputError(name, f"has {len(cond)} conditioning entries (combined/concatenated?); batching "
                                  "several counterfactuals needs exactly one text conditioning per concept")
    tensor, extra = cond[0]
    return tensor, extra


def _rows(t: torch.Tensor, B: int, name: str) -> torch.Tensor:
    if t.shape[0] == B:
        return t
    if t.shape[0] == 1:
        return t.repeat(B, *([1] * (t.ndim - 1)))
    raise CSGInputError(name, f"has batch {t.shape[0]}, but the inversion holds {B} image(s)")


def _stack_slot(entries, j: int, K: int, B: int, input_name: str, protect: bool = False) -> Slot:
    """Slot ``j``: the j-th concept of every counterfactual (None = padding) stacked into one
    CONDITIONING of K * B rows. Protect slots carry no guidance (scale 0) and are always on."""
    rep = lambda vals, dtype: torch.tensor([v for v in vals for _ in range(B)], dtype=dtype)  # noqa: E731
    present = rep([e is not None for e in entries], torch.bool)
    if protect:
        scale = rep([0.0 for _ in entries], torch.float32)
        warm = rep([NEVER if e is None else 0 for e in entries], torch.long)
        cool = rep([NEVER for _ in entries], torch.long)
    else:
        scale = rep([0.0 if e is None else (-e.scale if e.reverse else e.scale) for e in entries], torch.float32)
        warm = rep([NEVER if e is None else e.warmup for e in entries], torch.long)
        cool = rep([NEVER if e is None or e.cooldown is None else e.cooldown for e in entries], torch.long)
    thr = rep([0.0 if e is None else e.threshold for e in entries], torch.float32)
    ntok = rep([0 if e is None else (e.n_tokens if e.n_tokens is not None else 75) for e in entries], torch.long)
    labels = [None if e is None else (e.text or f"concept {j + 1}") for e in entries]
    what = "protect concept" if protect else "concept"
    if K == 1:
        cond = entries[0].conditioning  # unchanged: area, hooks, several entries all keep working
        for tensor, _ in cond:
            if tensor.shape[0] not in (1, B):
                raise CSGInputError(input_name, f"{what} {j + 1} has batch {tensor.shape[0]}, but the "
                                                f"inversion holds {B} image(s)")
    else:
        ref = next(e for e in entries if e is not None)
        ref_t, ref_x = _single_entry(ref.conditioning, f"{input_name}: {what} {j + 1}")
        tensors, pooled = [], []
        has_pooled = ref_x.get("pooled_output") is not None
        for e in entries:
            if e is None:
                t = torch.zeros((B, *ref_t.shape[1:]), dtype=ref_t.dtype)
                p = torch.zeros((B, *ref_x["pooled_output"].shape[1:])) if has_pooled else None
            else:
                t, x = _single_entry(e.conditioning, f"{input_name}: {what} {j + 1}")
                if t.shape[1:] != ref_t.shape[1:]:
                    raise CSGInputError(input_name, f"{what} {j + 1} of the counterfactuals have different "
                                                    f"token lengths {tuple(t.shape)} vs {tuple(ref_t.shape)}; "
                                                    "keep each phrase within 75 tokens")
                t = _rows(t, B, f"{input_name}: {what} {j + 1}")
                p = x.get("pooled_output")
                if (p is not None) != has_pooled:
                    raise CSGInputError(input_name, "concepts mix conditionings with and without pooled output")
                p = _rows(p, B, f"{input_name}: {what} {j + 1}") if p is not None else None
            tensors.append(t)
            pooled.append(p)
        extra = {k: v for k, v in ref_x.items() if k not in ("pooled_output", "hooks", "control", "area",
                                                               "mask", "strength", "start_percent",
                                                               "end_percent")}
        if has_pooled:
            extra["pooled_output"] = torch.cat(pooled)
        cond = [[torch.cat(tensors), extra]]
    assert present.shape[0] == K * B
    return Slot(cond, present, scale, thr, warm, cool, ntok, labels)


def _step_shape(cf: CounterfactualEdit) -> tuple:
    """What decides a counterfactual's rows at every step: each concept's active interval and
    the number of protect concepts."""
    spans = tuple((c.warmup, NEVER if c.cooldown is None else c.cooldown) for c in dedupe(cf.concepts))
    return spans, len(dedupe(cf.protect)) if cf.protect_strength > 0 else 0


def batch_groups(edits: EditSet) -> list[list[int]]:
    """Counterfactuals (indices, first-seen order) that can share one batch with no padded rows:
    those whose concepts are active on the same steps slot by slot. Batching them evaluates the
    same rows in fewer UNet calls (no more work; benchmarks/bench_csg.py measured 4-5 % less time
    than one by one at the median on a CPU, single rounds 0.92-1.03); a padded row would cost a
    full evaluation for nothing, so counterfactuals of different shapes are edited one group after another."""
    groups: dict = {}
    for k, cf in enumerate(edits.counterfactuals):
        groups.setdefault(_step_shape(cf), []).append(k)
    return list(groups.values())


def build_plan(edits: EditSet, batch: int, input_name: str = "edits", allow_empty: bool = False) -> Plan:
    """Stack the counterfactuals' concepts into slots (see module doc). ``allow_empty`` gives the
    zero edit (no concepts: the inversion's reconstruction dynamics)."""
    cfs = [CounterfactualEdit(dedupe(cf.concepts), cf.label, cf.protect, cf.protect_strength)
           for cf in edits.counterfactuals]
    cfs = [cf for cf in cfs if cf.concepts]
    if not cfs and allow_empty:
        return Plan([], 1, batch)
    if not cfs:
        raise CSGInputError(input_name, "no edit concepts: connect at least one concept CONDITIONING or "
                                        "an FMCGM_EDITS list (the intervened concept first)")
    for k, cf in enumerate(cfs):
        for c in cf.concepts:
            if c.role not in ROLES:
                raise CSGInputError(input_name, f"concept role must be one of {ROLES}, got {c.role!r}")
            if c.warmup < 0 or (c.cooldown is not None and c.cooldown < 0):
                raise CSGInputError(input_name, "warmup and cooldown must be >= 0")
            if not (0.0 <= c.threshold <= 1.0):
                raise CSGInputError(input_name, f"threshold must be in [0, 1], got {c.threshold}")
    K, B = len(cfs), batch
    n_slots = max(len(cf.concepts) for cf in cfs)
    slots = [_stack_slot([cf.concepts[j] if j < len(cf.concepts) else None for cf in cfs], j, K, B, input_name)
             for j in range(n_slots)]
    plan = Plan(slots, K, B)
    for cf in cfs:
        if not (0.0 <= cf.protect_strength <= 1.0):
            raise CSGInputError("protect_strength", f"must be in [0, 1], got {cf.protect_strength}")
    protected = [dedupe(cf.protect) if cf.protect_strength > 0 else () for cf in cfs]
    if any(protected):
        for k, cf in enumerate(cfs):
            for c in protected[k]:
                if not (0.0 <= c.threshold <= 1.0):
                    raise CSGInputError("protect_threshold", f"must be in [0, 1], got {c.threshold}")
        n_protect = max(len(p) for p in protected)
        plan.protect = [_stack_slot([p[m] if m < len(p) else None for p in protected], m, K, B,
                                    f"{input_name} (protect)", protect=True) for m in range(n_protect)]
        plan.protect_strength = torch.tensor([cf.protect_strength for cf in cfs for _ in range(B)],
                                             dtype=torch.float32)
    return plan


@dataclass(eq=False)
class StepResult:
    gamma: torch.Tensor               # [R, C, h, w] eps-space guidance
    mu: dict                          # slot -> [R, 1, h, w] (zeros on inactive rows)
    active: dict                      # slot -> [R] bool
    m1: dict
    m2: dict
    protect: torch.Tensor | None = None   # P = max_k M1_k [R, 1, h, w] (None: protection off or unused)
    protect_m1: dict = field(default_factory=dict)   # protect slot -> M1_k [R, 1, h, w] (0 on padded rows)
    guidance: dict = field(default_factory=dict)     # slot -> s_e * (eps_c - eps_u) before masking


def protect_key(m: int) -> tuple:
    """Key of protect slot ``m`` in the attention maps (edit slots use their index)."""
    return (PROTECT, m)


def protection(plan: Plan, attn_maps: dict, latent_hw: tuple) -> tuple:
    """(P, {m: M1_m}): the union (max) of the protect concepts' cross-attention masks;
    rows without a protect concept in slot m get zeros there."""
    P, m1s = None, {}
    for m, slot in enumerate(plan.protect):
        S = attn_maps.get(protect_key(m))
        if S is not None:
            m1 = masks_mod.attention_mask(S, slot.threshold.to(S.device), latent_hw)
        elif not slot.needs_maps(slot.present):
            m1 = torch.ones(slot.present.shape[0], 1, *latent_hw)
        else:
            raise RuntimeError("no cross-attention maps were captured for a protect concept; is the model's "
                               "attention replaced by another node that bypasses attn2 replacements?")
        m1 = m1 * slot.present.to(m1.device).view(-1, 1, 1, 1).float()
        m1s[m] = m1
        P = m1 if P is None else torch.maximum(P, m1)
    return P, m1s


def combine(D_u: torch.Tensor, D_slots: dict, sigma: torch.Tensor, step: int, plan: Plan, attn_maps: dict,
            mask_mode: str = "intersect", user_mask: torch.Tensor | None = None) -> StepResult:
    """CSG guidance for one step from x0-predictions (ComfyUI's D = x - sigma * eps).

    ``D_slots`` maps slot index -> D of that slot's conditioning; ``attn_maps`` slot -> S
    [R, h/4, w/4] (protect slot m: ``protect_key(m)``). Returns gamma in eps space; the guided
    prediction is D_u - sigma * gamma. eps_c - eps_u is formed as (D_u - D_c) / sigma (no
    cancellation against x). With protect slots in the plan, each mu_j is multiplied by
    (1 - strength * P); without, this factor is not even formed."""
    sig = sigma.reshape(-1, *([1] * (D_u.ndim - 1))).float()
    gamma = torch.zeros_like(D_u, dtype=torch.float32)
    mus, acts, m1s, m2s, gs = {}, {}, {}, {}, {}
    keep = P = None
    pm1s = {}
    for j, D_c in D_slots.items():
        slot = plan.slots[j]
        a = slot.active(step).to(D_u.device)
        acts[j] = a
        if not bool(a.any()):
            continue
        g = (D_u.float() - D_c.float()) / sig
        g = g * slot.scale.to(g.device).view(-1, 1, 1, 1)
        if user_mask is not None:
            g = g * user_mask.to(g.device, g.dtype)
        mu, m1, m2 = masks_mod.combine(mask_mode, g, attn_maps.get(j), slot.threshold.to(g.device))
        mu = mu * a.view(-1, 1, 1, 1).float()
        if plan.protect:
            if keep is None:
                P, pm1s = protection(plan, attn_maps, tuple(g.shape[-2:]))
                keep = 1.0 - plan.protect_strength.to(g.device).view(-1, 1, 1, 1) * P
            mu = mu * keep
        gamma = gamma + mu * g
        mus[j], m1s[j], m2s[j], gs[j] = mu, m1, m2, g
    return StepResult(gamma, mus, acts, m1s, m2s, P, pm1s, gs)


START_TOKEN, END_TOKEN = 49406, 49407


def count_tokens(clip, text: str, input_name: str = "text") -> int:
    """Real tokens of ``text`` as diffusers counts them (tokenizer_2 length minus start and end):
    entries of the first chunk between the start token and the first end token. SDXL: clip_g's
    tokens ("g"); SD1.5: clip_l's."""
    tokens = clip.tokenize(text)
    key = "g" if "g" in tokens else ("l" if "l" in tokens else next(iter(tokens)))
    chunks = tokens[key]
    if len(chunks) > 1:
        raise CSGInputError(input_name, f"{text[:40]!r}... is longer than 75 tokens; use a short phrase per concept")
    ids = [t[0] for t in chunks[0]]
    n = 0
    for tok in ids[1:]:
        if isinstance(tok, int) and tok == END_TOKEN:
            break
        n += 1
    return n




def encode_concept(clip, text: str, input_name: str = "text", attention_tokens: str = "prompt",
                   **params) -> EditConcept:
    """Encode one edit phrase with ComfyUI's CLIP (as CLIPTextEncode does) and count its tokens.

    ``attention_tokens``: "prompt" sums the cross-attention of the phrase's own tokens (LEDITS++ as
    published); "all" sums columns 1..75 (start token excluded), which is what diffusers 0.42 computes
    with transformers >= 5 tokenizers (their ``return_length`` counts padding)."""
    if clip is None:
        raise CSGInputError("clip", "is missing (a checkpoint without a text encoder?)")
    if not isinstance(text, str) or not text.strip():
        raise CSGInputError(input_name, "is empty; give the concept's phrase, e.g. 'a woman'")
    if attention_tokens not in ATTENTION_TOKENS:
        raise CSGInputError("attention_tokens", f"must be one of {ATTENTION_TOKENS}, got {attention_tokens!r}")
    n = count_tokens(clip, text, input_name)
    if attention_tokens == "all":
        n = 75
    tokens = clip.tokenize(text)
    cond = clip.encode_from_tokens_scheduled(tokens)
    return EditConcept(conditioning=cond, n_tokens=n, text=text, **params)
