"""The in-process Qwen3-VL backend on tiny random-weight folders built by transformers itself.

Random weights make the text meaningless, so tests assert structure (schema validity,
callbacks, determinism, error messages), never the generated words.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
import torch

from fmcgm.vlm.base import GenerationRequest, VLMError
from tests.fixtures.tiny_qwen3vl import build_tiny_qwen3vl, tiny_qwen3vl_folder, weights_sha256
from tests.vlm_requests import json_request

torch.set_num_threads(1)

# Bounded everywhere: with random weights only the schema can end strings and arrays.
SCHEMA = {
    "type": "object",
    "properties": {
        "concepts": {"type": "array", "minItems": 1, "maxItems": 3,
                     "items": {"type": "string", "pattern": "^[a-z]{1,8}$"}},
        "edges": {"type": "array", "maxItems": 2, "items": {
            "type": "object",
            "properties": {"source": {"type": "integer", "minimum": 0, "maximum": 2},
                           "target": {"type": "integer", "minimum": 0, "maximum": 2},
                           "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
            "required": ["source", "target", "confidence"], "additionalProperties": False}},
    },
    "required": ["concepts", "edges"],
    "additionalProperties": False,
}


COLOUR = (200, 40, 30)


def request(**overrides) -> GenerationRequest:
    return json_request(SCHEMA, "List the concepts and their causal links.", COLOUR,
                        **{"temperature": 0.7, "max_new_tokens": 160, "seed": 0, **overrides})


def assert_schema_valid(text: str) -> dict:
    answer = json.loads(text)
    jsonschema.validate(answer, SCHEMA)
    return answer


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_qwen3vl")


@pytest.fixture(scope="module")
def backends(tiny_root):
    """Loaded backends, one per (variant, thinking), created on first use."""
    from fmcgm.vlm.transformers_backend import TransformersBackend

    cache: dict = {}

    def get(variant: str = "dense", thinking: bool = False):
        if (variant, thinking) not in cache:
            folder = tiny_qwen3vl_folder(tiny_root, variant, thinking)
            cache[variant, thinking] = TransformersBackend(str(folder), device="cpu", thinking_budget=12)
        return cache[variant, thinking]
    return get


# -- the fixture itself --------------------------------------------------------------------------

def test_fixture_weights_are_deterministic_per_seed(tiny_root, tmp_path):
    a = tiny_qwen3vl_folder(tiny_root, seed=0)  # shared with the other tests
    b = build_tiny_qwen3vl(tmp_path / "b", seed=0)
    c = build_tiny_qwen3vl(tmp_path / "c", seed=1)
    assert weights_sha256(a) == weights_sha256(b) != weights_sha256(c)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("variant,thinking", [("dense", False), ("dense", True), ("moe", False), ("moe", True)])
def test_fixture_loads_like_a_real_download(tiny_root, variant, thinking):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = tiny_qwen3vl_folder(tiny_root, variant, thinking)
    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    expected = "Qwen3VLMoeForConditionalGeneration" if variant == "moe" else "Qwen3VLForConditionalGeneration"
    assert type(model).__name__ == expected
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    assert tok.convert_tokens_to_ids("<|vision_start|>") == model.config.vision_start_token_id
    assert tok.eos_token == "<|im_end|>" and "</think>" in tok.decode(tok.encode("a</think>b"), skip_special_tokens=True)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        add_generation_prompt=True, tokenize=False)
    expected_prompt = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    assert prompt == expected_prompt + ("<think>\n" if thinking else "")


def test_fixture_image_reaches_the_vision_tower(backends):
    backend = backends("dense")
    prompt, images = backend.render_prompt(request())
    inputs = backend.processor(text=[prompt], images=images, return_tensors="pt")
    image_tokens = int((inputs["input_ids"] == backend.model.config.image_token_id).sum())
    # One token per 2x2 merged 16-px patch; 64x48 is upscaled (aspect kept) to the 64-token floor.
    assert image_tokens == int(inputs["image_grid_thw"].prod()) // 4 >= 64
    with torch.inference_mode():
        logits = backend.model(**inputs).logits[0, -1]
        inputs["pixel_values"] = torch.zeros_like(inputs["pixel_values"])
        blank = backend.model(**inputs).logits[0, -1]
    assert not torch.allclose(logits, blank)


# -- generation --------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["dense", "moe"])
def test_generate_with_schema_returns_schema_valid_json(backends, variant):
    backend = backends(variant)
    for seed in (0, 1):
        text = backend.generate(request(seed=seed))
        assert_schema_valid(text)
        assert backend.last_stats.constrained
        assert backend.last_stats.new_tokens < 160  # the grammar ended it, not max_new_tokens
    assert ("MoE" in backend.describe()) == (variant == "moe")


def test_without_schema_the_random_model_is_not_json(backends):
    """Proves the constraint, not luck, makes the previous test pass."""
    text = backends("dense").generate(request(json_schema=None, max_new_tokens=40))
    with pytest.raises(ValueError):
        json.loads(text)


def test_on_token_is_called_once_per_generated_token(backends):
    backend = backends("dense")
    calls = []
    backend.generate(request(), on_token=lambda n, total: calls.append((n, total)))
    n = backend.last_stats.new_tokens
    assert calls == [(i, 160) for i in range(1, n + 1)]


def test_raising_from_on_token_stops_generation(backends):
    class Cancelled(Exception):
        pass

    calls = []

    def cancel_at_three(n: int, total: int) -> None:
        calls.append(n)
        if n == 3:
            raise Cancelled

    backend = backends("dense")
    with pytest.raises(Cancelled):
        backend.generate(request(json_schema=None, max_new_tokens=50), on_token=cancel_at_three)
    assert calls == [1, 2, 3]
    assert_schema_valid(backend.generate(request()))  # still usable after a cancel


def test_greedy_decoding_is_deterministic_and_ignores_the_seed(backends):
    backend = backends("dense")
    first = backend.generate(request(temperature=0.0, seed=0))
    assert backend.generate(request(temperature=0.0, seed=0)) == first
    assert backend.generate(request(temperature=0.0, seed=123)) == first


def test_sampling_is_reproducible_from_the_seed(backends):
    backend = backends("moe")
    rng_before = torch.random.get_rng_state()
    texts = [backend.generate(request(json_schema=None, max_new_tokens=24, temperature=1.0, seed=5))
             for _ in range(2)]
    assert texts[0] == texts[1]
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched


def test_thinking_model_reasons_then_answers_in_schema(backends):
    backend = backends("dense", thinking=True)
    assert backend.folder.thinking and "Thinking" in backend.describe()
    text = backend.generate(request(enable_thinking=True))
    assert text.startswith("<think>\n")
    reasoning, answer = text[len("<think>\n"):].split("</think>", 1)
    assert_schema_valid(answer)
    assert 1 <= backend.last_stats.reasoning_tokens <= 12  # the budget forced </think>


def test_thinking_model_with_thinking_disabled_answers_directly(backends):
    backend = backends("moe", thinking=True)
    text = backend.generate(request(enable_thinking=False))
    assert "<think>" not in text and "</think>" not in text
    assert_schema_valid(text)
    assert backend.last_stats.reasoning_tokens == 0


def test_without_xgrammar_generation_is_unconstrained_and_logged(tiny_root, monkeypatch, caplog):
    from fmcgm.vlm import transformers_backend

    monkeypatch.setattr(transformers_backend, "xgrammar_available", lambda: False)
    backend = transformers_backend.TransformersBackend(str(tiny_qwen3vl_folder(tiny_root)), device="cpu")
    with caplog.at_level("WARNING"):
        backend.generate(request(max_new_tokens=8))
    assert not backend.last_stats.constrained
    assert "xgrammar is not installed" in caplog.text


def test_schema_is_compiled_once_per_backend(backends):
    backend = backends("dense")
    first = backend.grammars.compile(SCHEMA)
    compiled = len(backend.grammars)
    backend.generate(request(max_new_tokens=4))
    assert backend.grammars.compile(json.loads(json.dumps(SCHEMA))) is first
    assert len(backend.grammars) == compiled


# -- loading options -------------------------------------------------------------------------

def test_dtype_choice_and_moving_the_model(tiny_root):
    from fmcgm.vlm.transformers_backend import TransformersBackend

    backend = TransformersBackend(str(tiny_qwen3vl_folder(tiny_root)), device="cpu", dtype="bf16",
                                  attention="eager")
    assert isinstance(backend.model, torch.nn.Module)
    assert backend.dtype == torch.bfloat16 and backend.device.type == "cpu"
    assert backend.model.config._attn_implementation == "eager"
    assert backend.to("cpu") is backend
    assert_schema_valid(backend.generate(request(max_new_tokens=160)))


def test_auto_dtype_is_fp32_on_cpu(backends):
    assert backends("dense").dtype == torch.float32  # the folder itself is stored in bf16


@pytest.mark.parametrize("option,value,message", [
    ("dtype", "int3", "Unknown dtype 'int3'"),
    ("attention", "magic", "Unknown attention implementation 'magic'"),
    ("device", "toaster", "Unknown device 'toaster'"),
])
def test_bad_options_are_named(tiny_root, option, value, message):
    from fmcgm.vlm.transformers_backend import TransformersBackend

    with pytest.raises(VLMError, match=message):
        TransformersBackend(str(tiny_qwen3vl_folder(tiny_root)), **{option: value})


def test_flash_attention_without_the_package_is_a_clear_error(tiny_root):
    import importlib.util
    from fmcgm.vlm.transformers_backend import TransformersBackend

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(VLMError, match="flash-attn package"):
        TransformersBackend(str(tiny_qwen3vl_folder(tiny_root)), attention="flash_attention_2")


# -- bad folders -----------------------------------------------------------------------------

@pytest.fixture
def folder_copy(tiny_root, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_qwen3vl_folder(tiny_root), tmp_path / "Qwen3-VL-copy"))


def load(path, **kwargs):
    from fmcgm.vlm.transformers_backend import TransformersBackend
    return TransformersBackend(str(path), device="cpu", **kwargs)


def test_missing_folder_lists_where_it_looked(tmp_path, tiny_root):
    search = [tmp_path / "models" / "LLM", tiny_root]
    with pytest.raises(VLMError) as info:
        load("Qwen3-VL-8B-Instruct", search_dirs=[str(d) for d in search])
    message = str(info.value)
    assert "'Qwen3-VL-8B-Instruct' not found" in message
    assert str(tmp_path / "models" / "LLM" / "Qwen3-VL-8B-Instruct") in message
    assert str(tiny_root / "Qwen3-VL-8B-Instruct") in message
    assert "Qwen3-VL-tiny-dense-Instruct-seed0" in message  # what is available there


def test_folder_found_by_name_in_a_search_dir(tiny_root):
    folder = tiny_qwen3vl_folder(tiny_root)
    from fmcgm.vlm.loading import inspect_model_folder

    info = inspect_model_folder(folder.name, search_dirs=["/nonexistent", str(tiny_root)])
    assert info.path == folder.resolve() and info.model_type == "qwen3_vl" and not info.is_moe


def test_incomplete_folder_names_the_missing_files(folder_copy):
    (folder_copy / "model.safetensors").unlink()
    (folder_copy / "tokenizer.json").unlink()
    (folder_copy / "processor_config.json").unlink()
    with pytest.raises(VLMError) as info:
        load(folder_copy)
    message = str(info.value)
    assert "incomplete" in message and str(folder_copy) in message
    for needed in ("weights", "tokenizer.json", "preprocessor_config.json"):
        assert needed in message
    assert "config.json" in message.split("Present:")[1]  # and what is there


@pytest.fixture(scope="module")
def published_folder(tmp_path_factory) -> Path:
    """Sharded weights and the Hub's processor files, like a real Qwen3-VL download."""
    return build_tiny_qwen3vl(tmp_path_factory.mktemp("published") / "Qwen3-VL-tiny-Thinking", thinking=True,
                              published_layout=True, max_shard_size="400KB")


def test_published_sharded_layout_loads_and_generates(published_folder):
    assert len(list(published_folder.glob("model-*-of-*.safetensors"))) >= 2
    assert not (published_folder / "processor_config.json").exists()
    backend = load(published_folder, thinking_budget=8)
    assert backend.folder.thinking and len(backend.folder.weight_files) >= 2
    text = backend.generate(request(enable_thinking=True))
    assert_schema_valid(text.split("</think>", 1)[1])


def test_missing_shard_of_a_sharded_checkpoint_is_named(published_folder, tmp_path):
    folder = Path(shutil.copytree(published_folder, tmp_path / "partial"))
    last = sorted(folder.glob("model-*-of-*.safetensors"))[-1]
    last.unlink()
    with pytest.raises(VLMError, match=f"weight shards {last.name}"):
        load(folder)


def test_folder_of_another_architecture_says_which_and_what_is_supported(folder_copy):
    config = json.loads((folder_copy / "config.json").read_text())
    config.update(model_type="qwen2_5_vl", architectures=["Qwen2_5_VLForConditionalGeneration"])
    (folder_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(VLMError) as info:
        load(folder_copy)
    message = str(info.value)
    assert "qwen2_5_vl" in message and "Qwen2_5_VLForConditionalGeneration" in message
    assert "qwen3_vl" in message and "qwen3_vl_moe" in message


def test_unreadable_config_is_reported(folder_copy):
    (folder_copy / "config.json").write_text("{not json")
    with pytest.raises(VLMError, match="config.json is not readable JSON"):
        load(folder_copy)


def test_damaged_weights_are_reported_as_such(folder_copy):
    (folder_copy / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(VLMError, match="Could not load"):
        load(folder_copy)


def test_blocked_tokens_are_removed_on_top_of_the_grammar(backends):
    from fmcgm.vlm.constrained import ConstrainedDecoding

    backend = backends("dense")
    grammar = backend.grammars.compile({"type": "string", "pattern": "^[a-z]{1,8}$"})
    prompt = torch.zeros(1, 4, dtype=torch.long)

    def allowed(blocked) -> set:
        scores = ConstrainedDecoding(grammar, blocked_token_ids=blocked)(prompt, torch.zeros(1, 512))
        return set(torch.nonzero(scores[0] > float("-inf")).flatten().tolist())

    free = allowed([])
    quote = backend.tokenizer.convert_tokens_to_ids('"')
    assert quote in free and len(free) < 512  # the grammar allows only string openings
    blocked = sorted(free)[:3] + [31, 63, 511]  # incl. the top bit of an int32 word
    assert allowed(blocked) == free - set(blocked)


# -- the constrained-decoding benchmark ----------------------------------------------------------

def test_constrained_decoding_benchmark_runs(tmp_path, capsys):
    """A smoke run (tiny vocabulary, one round): every production stage measured both ways on the
    same token count, compile repeats served by the cache. Figures are not asserted."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_constrained_decoding.py"
    spec = importlib.util.spec_from_file_location("bench_constrained_decoding", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--vocab", "tiny", "--rounds", "1", "--tokens", "6", "--json", str(tmp_path / "out.json")])
    stages = ["description", "concepts", "edges", "manipulator manual", "manipulator automatic", "evaluation judge"]
    assert list(result["decoding"]) == stages and list(result["compile"]["stages"]) == stages
    for stage in result["decoding"].values():
        (constrained,), (unconstrained,) = stage["rounds"]["constrained"], stage["rounds"]["unconstrained"]
        assert constrained["constrained"] and not unconstrained["constrained"]
        assert constrained["tokens"] == unconstrained["tokens"] >= 2
    compiled = {name: c["new_graph_compiled"] for name, c in result["compile"]["stages"].items()}
    assert compiled == {"description": 0, "concepts": 0, "edges": 1, "manipulator manual": 1,
                        "manipulator automatic": 1, "evaluation judge": 1}
    assert not any(c["repeat"]["compiled"] for c in result["compile"]["stages"].values())
    assert json.loads((tmp_path / "out.json").read_text())["rounds"] == 1
    assert "goal (wall): overhead < 10% on every stage" in capsys.readouterr().out
