"""The self-checking edit: holds, judges, the loop's rules (tiny SDXL), and the shipped miniature
world's demo picture rendered right through the real executor (the trained checkpoint)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fmcgm.evaluation import EffectivenessResult, Verdict
from fmcgm.judges import ErringJudge, all_verdicts
from fmcgm.roles import Role

N = 12


# ---------------------------------------------------------------- judges (no ComfyUI)

class Scripted:
    """A judge that answers from a list of {concept: present} per call and knows (or not) regions."""
    name = "scripted"

    def __init__(self, answers, regions=None):
        self.answers, self.known, self.calls = list(answers), regions, 0

    def judge(self, picture, cf):
        from fmcgm.evaluation import counterfactual_targets, invariant_targets
        said = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        v = lambda t: Verdict(t[0], t[1], t[2], said.get(t[0], True))  # noqa: E731
        return EffectivenessResult(tuple(map(v, counterfactual_targets(cf))), tuple(map(v, invariant_targets(cf))))

    def regions(self, cf, size):
        return self.known


def _result(*presents):
    return EffectivenessResult(tuple(Verdict(f"c{k}", "v", Role.DESCENDANT, p) for k, p in enumerate(presents)),
                               (Verdict("inv", "v", Role.INVARIANT, True),))


class Fixed:
    name = "fixed"

    def __init__(self, result):
        self.result = result

    def judge(self, picture, cf):
        return self.result

    def regions(self, cf, size):
        return None


def test_the_erring_judge_flips_judged_verdicts_at_its_rate_and_repeats_with_its_seed():
    base = _result(*([True] * 300), None)
    never, always = ErringJudge(Fixed(base), 0.0), ErringJudge(Fixed(base), 1.0)
    assert [v.present for v in all_verdicts(never.judge(None, None))] == [v.present for v in all_verdicts(base)]
    flipped = [v.present for v in all_verdicts(always.judge(None, None))]
    assert flipped[:300] == [False] * 300 and flipped[300] is None and flipped[301] is False  # unjudged stays so
    a, b = ErringJudge(Fixed(base), 0.2, seed=4), ErringJudge(Fixed(base), 0.2, seed=4)
    first = [v.present for v in all_verdicts(a.judge(None, None))]
    assert first == [v.present for v in all_verdicts(b.judge(None, None))]
    assert 0.12 < first[:300].count(False) / 300 < 0.28
    assert first != [v.present for v in all_verdicts(a.judge(None, None))]  # the next call draws anew
    with pytest.raises(ValueError, match="error rate"):
        ErringJudge(Fixed(base), 1.5)


# ---------------------------------------------------------------- holds and the loop (tiny SDXL)

@pytest.fixture(scope="module")
def tiny(comfy_dirs):
    from tests.conftest import tiny_sdxl_picture, tiny_inversion
    picture = tiny_sdxl_picture(seed=3)
    return picture, tiny_inversion(picture, steps=N)


def test_held_cells_stay_on_the_reconstruction_and_the_rest_is_edited(tiny):
    from fmcgm.csg import guidance, hold, sampler
    picture, inv = tiny
    model = picture["model"]
    with torch.inference_mode():
        ref = sampler.reconstruction_predictions(model, inv)
        zero = sampler.edit(model, inv, guidance.EditSet(), allow_empty=True).latent
        edit = guidance.EditSet((guidance.CounterfactualEdit(
            (guidance.encode_concept(picture["clip"], "a red ball", scale=20.0, warmup=0, threshold=0.0),)),))
        mask = torch.zeros(1, 1, *inv.latent_shape[-2:])
        mask[..., :, : mask.shape[-1] // 2] = 1.0
        held = sampler.edit(model, inv, edit, hold=hold.Hold(mask, ref), mask_mode="cross_attn").latent
        free = sampler.edit(model, inv, edit, mask_mode="cross_attn").latent
    left, right = (slice(None), slice(None), slice(None), slice(None, mask.shape[-1] // 2)), \
        (slice(None), slice(None), slice(None), slice(mask.shape[-1] // 2, None))
    scale = float(zero.abs().max())
    assert float((held[left] - zero[left]).abs().max()) < 1e-4 * scale
    assert float((free[left] - zero[left]).abs().max()) > 1e-2 * scale      # without the hold it moves
    assert float((held[right] - zero[right]).abs().max()) > 1e-2 * scale    # the edit still happens


def test_hold_masks_never_take_a_cell_that_shows_anything_outside_the_region():
    from fmcgm.csg.errors import CSGInputError
    from fmcgm.csg.hold import latent_mask
    region = np.zeros((32, 32), dtype=bool)
    region[:16, :20] = True
    m = latent_mask(region, (4, 4))[0, 0]
    assert m.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(CSGInputError, match="does not tile"):
        latent_mask(np.zeros((30, 32), dtype=bool), (4, 4))


def _counterfactual():
    from fmcgm.graph import CausalGraph, Concept, Edge
    from fmcgm.manipulator import apply_intervention
    graph = CausalGraph((Concept("weather", "rainy"), Concept("ground", "wet ground"), Concept("ball", "red ball")),
                        (Edge("weather", "ground"),))
    return apply_intervention(graph, "weather", "sunny", proposed={"ground": "dry ground"})


def _run(tiny, judge, **settings):
    from fmcgm.csg import self_check
    picture, inv = tiny
    decode = lambda raw: (picture["vae"].decode(raw).clamp(0, 1).numpy() * 255).astype(np.uint8)  # noqa: E731
    return self_check.judged_edit(picture["model"], picture["clip"], decode, picture["latent"]["samples"], inv,
                                  [_counterfactual()], judge, self_check.Settings(**settings))[0]


def test_the_loop_boosts_what_failed_holds_what_changed_then_regenerates_and_keeps_the_best(tiny):
    from fmcgm.csg import self_check
    region = np.zeros((128, 128), dtype=bool)
    region[64:, :64] = True
    regions = {"weather": np.zeros_like(region), "ground": np.zeros_like(region), "ball": region}
    judge = Scripted([{"ground": False, "ball": False}, {"ball": False}, {"weather": False}, {}], regions)
    out = _run(tiny, judge, scale=8.0, threshold=0.7, warmup=4, max_rounds=4, regenerate_rounds=1)
    r1, r2, r3, r4 = out.rounds
    assert [r.renderer for r in out.rounds] == [self_check.CSG] * 3 + [self_check.REGENERATE]
    assert r2.params["ground"] == {"scale": 12.0, "threshold": 0.6, "warmup": 2}   # boosted: it was not shown
    assert r2.params["weather"] == {"scale": 8.0, "threshold": 0.7, "warmup": 4}   # shown: unchanged
    assert r1.held == () and r2.held == ("ball",) and r3.held == ("ball",)          # changed in round 1: held
    assert r4.held == ()                                                            # regeneration starts afresh
    assert out.best is r4 and "stopped: round 4 passed" in out.report("scripted")
    assert not np.array_equal(r1.picture, r2.picture)


def test_without_regions_a_changed_invariant_is_protected_and_the_budgets_stop_the_loop(tiny):
    judge = Scripted([{"ball": False}, {"ground": False}])
    out = _run(tiny, judge, max_rounds=2, regenerate_rounds=0)
    assert out.rounds[1].protected == ("ball",) and out.rounds[1].held == ()
    assert out.rounds[0].passed == out.rounds[1].passed == 2
    assert out.best is out.rounds[0]                       # a tie: the earlier (smaller) edit is kept
    assert "budget of 2 round(s)" in out.report("scripted")
    timed = _run(tiny, Scripted([{"ball": False}]), max_rounds=5, regenerate_rounds=0, max_seconds=1e-6)
    assert len(timed.rounds) == 1 and "time budget" in timed.report("scripted")
    from fmcgm.csg.errors import CSGInputError
    with pytest.raises(CSGInputError, match="regenerate_rounds"):
        _run(tiny, judge, max_rounds=2, regenerate_rounds=2)


def test_a_vlm_judge_reads_each_round_and_what_it_could_not_tell_is_reported(tiny):
    """VLM-Eff as the judge: the picture goes to the model with the targets and the invariants; a
    concept the answer leaves out is unjudged (not failed) and named in the report; a VLM cannot say
    where a concept lies, so a changed invariant is protected by its attention mask."""
    from fmcgm.judges import VLMJudge
    from tests.fixtures.scripted_vlm import ScriptedBackend
    backend = ScriptedBackend('{"verdicts": {"weather": true, "ground": false, "ball": false}}',
                              '{"verdicts": {"weather": true, "ground": true}}')
    out = _run(tiny, VLMJudge(backend, name="the scripted VLM"), max_rounds=2, regenerate_rounds=0)
    first, second = out.rounds
    assert [v.present for v in first.verdict.verdicts] == [True, False]
    assert second.params["ground"]["scale"] == 12.0 and second.protected == ("ball",)
    assert [v.present for v in second.verdict.invariance_verdicts] == [None]
    report = out.report("the scripted VLM")
    assert "the judge could not tell: ball" in report and out.best is second
    assert len(backend.requests) == 2 and any(m.images for m in backend.requests[0].messages)  # the picture went


# ---------------------------------------------------------------- the demo picture, through the executor

@pytest.mark.skipif(not __import__("fmcgm.miniworld.pipeline", fromlist=["x"]).CHECKPOINT.is_file(),
                    reason="needs the shipped miniature-world checkpoint")
def test_the_shipped_demo_picture_is_rendered_right_by_the_oracle(comfy):
    """The miniature world's workflow picture (rainy, red house, left, layout 7), do(weather = sunny),
    through the real executor: the output shows all 4 new values and keeps both non-descendants."""
    from fmcgm.miniworld import pipeline, world
    scene_inputs = {"weather": "rainy", "house": "red house", "house_side": "house on the left side",
                    "layout_seed": 7, "sky": "(from the weather)", "ground": "(from the weather)",
                    "windows": "(from the weather)", "size": 128}
    scene = world.scene_from_values("rainy", "red house", "house on the left side", 7)
    values = "\n".join(f"{k}: {v}" for k, v in world.propagated_values(scene, "weather", "sunny").items())
    prompt = {
        "1": {"class_type": "FMCGMLoadTinySDXLCheckpoint", "inputs": {"ckpt_name": pipeline.CHECKPOINT_NAME}},
        "2": {"class_type": "FMCGMMiniworldScene", "inputs": scene_inputs},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "8": {"class_type": "FMCGMConceptManipulator", "inputs": {
            "causal_graph": ["2", 1], "mode": "graph-only", "concept": "weather", "value": "sunny",
            "descendant_values": values, "num_interventions": 3, "temperature": 0.2, "enable_thinking": False,
            "max_new_tokens": 3072, "seed": 0}},
        "10": {"class_type": "FMCGMDPMSolverInversion", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "seed": 0, "steps": 100, "skip": 0.15, "zero_noise_steps": 3,
            "source_scale": 3.5, "timesteps_per_call": 1, "sigma_table": "model"}},
        "12": {"class_type": "FMCGMSelfCheckingEdit", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "latent": ["3", 0], "inversion": ["10", 0],
            "counterfactual": ["8", 0], "judge": ["2", 4], "edit_guidance": 16.0, "threshold": 0.5, "warmup": 10,
            "max_rounds": 5, "regenerate_rounds": 2, "max_seconds": 0.0}},
        "17": {"class_type": "FMCGMMiniworldOracle", "inputs": {"image": ["12", 0], "counterfactual": ["8", 0]}},
    }
    _, outputs = comfy.run_prompt(prompt)
    oracle = outputs["17"]["text"][0]
    assert "effectiveness 4/4" in oracle and "invariance 2/2" in oracle, oracle
    assert "every verdict passes" in outputs["12"]["text"][0]
