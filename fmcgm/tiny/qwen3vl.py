"""Tiny random-weight Qwen3-VL model folders, built offline in well under a second.

The folders are written by transformers' own ``save_pretrained`` from the real classes
(``Qwen3VLForConditionalGeneration`` / ``Qwen3VLMoeForConditionalGeneration``,
``Qwen3VLProcessor``, ``Qwen2Tokenizer``), so ``from_pretrained(folder, local_files_only=True)``
runs exactly the code path a user's downloaded checkpoint runs. Sizes follow
Qwen3-VL's own configs, shrunk; the tokenizer is a byte-level BPE trained on a few lines (any
text stays encodable) carrying Qwen's special tokens in Qwen's order, and the chat template
reproduces Qwen3-VL's (Instruct, or Thinking with its ``<think>`` handling).

CLI (for demos): ``python -m fmcgm.tiny.qwen3vl OUT_DIR --variant moe [--thinking]``
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

VARIANTS = ("dense", "moe")

# Qwen2/2.5/3/3-VL added tokens, in the order that gives the real ids 151643.. upwards.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
NON_SPECIAL_ADDED_TOKENS = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
]

MODEL_VOCAB_ROWS = 512  # embedding rows > len(tokenizer), as in the real 151,936 vs 151,669
BPE_VOCAB = MODEL_VOCAB_ROWS - 32  # leaves room for the 26 added tokens
# Model embedding rows per tokenizer vocabulary ("real": Qwen's BPE, as in every Qwen3-VL checkpoint).
VOCABS = {"tiny": MODEL_VOCAB_ROWS, "real": 151_936}

_CORPUS = [
    '{"nodes": [{"id": "rain", "label": "rain"}, {"id": "wet_street", "label": "wet street"}],',
    ' "edges": [{"source": "rain", "target": "wet_street", "relation": "causes", "confidence": 0.9}]}',
    "A woman in a white space suit holds a helmet; an American flag hangs behind her.",
    "The lamp lights the table, the shadow falls on the floor, and the cat sleeps near the window.",
    "concepts, causes, effects, objects, attributes, relations: sun, shadow, light, colour, size.",
    "0123456789 true false null [] {} , : \" \\ / - _ . ! ? ' ( ) < > = + * # @ & % $ ~ ^ |",
]

# Qwen3-VL's chat template. Instruct and Thinking share the content rendering, system/tool
# preamble and tool turns; Thinking additionally restores reasoning in the assistant turns
# after the last user query and opens a <think> block in the generation prompt.
_TEMPLATE_HEAD = r"""{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- macro render_content(content, do_vision_count) %}
    {%- if content is string %}
        {{- content }}
    {%- else %}
        {%- for item in content %}
            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}
                {%- if do_vision_count %}
                    {%- set image_count.value = image_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                <|vision_start|><|image_pad|><|vision_end|>
            {%- elif 'video' in item or item.type == 'video' %}
                {%- if do_vision_count %}
                    {%- set video_count.value = video_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                <|vision_start|><|video_pad|><|vision_end|>
            {%- elif 'text' in item %}
                {{- item.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
{%- endmacro %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- render_content(messages[0].content, false) + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + render_content(messages[0].content, false) + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
"""

_THINKING_LAST_QUERY = r"""{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" %}
        {%- set content = render_content(message.content, false) %}
        {%- if not(content.startswith('<tool_response>') and content.endswith('</tool_response>')) %}
            {%- set ns.multi_step_tool = false %}
            {%- set ns.last_query_index = index %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
"""

_INSTRUCT_ASSISTANT = r"""        {{- '<|im_start|>' + message.role + '\n' + content }}
"""

_THINKING_ASSISTANT = r"""        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
"""

_TEMPLATE_TURNS = r"""{%- for message in messages %}
    {%- set content = render_content(message.content, True) %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
@@ASSISTANT@@        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n@@GENERATION_PREFIX@@' }}
{%- endif %}
"""


def qwen3vl_chat_template(thinking: bool) -> str:
    """The Qwen3-VL chat template of an Instruct (False) or Thinking (True) checkpoint."""
    turns = _TEMPLATE_TURNS.replace("@@ASSISTANT@@", _THINKING_ASSISTANT if thinking else _INSTRUCT_ASSISTANT)
    turns = turns.replace("@@GENERATION_PREFIX@@", r"<think>\n" if thinking else "")
    return _TEMPLATE_HEAD + (_THINKING_LAST_QUERY if thinking else "") + turns


def _trained_vocab_and_merges() -> tuple[dict, list]:
    """A byte-level BPE trained on a few lines, with the full 256-byte alphabet (any text encodes)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    return model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def build_tokenizer(vocab: str = "tiny"):
    """A Qwen2Tokenizer whose added tokens and their order match Qwen3-VL's.

    ``vocab``: "tiny" (a 480-token BPE trained here) or "real" (Qwen's own 151,643-token BPE,
    fmcgm/tiny/qwen_vocab.py), which gives the real token ids and 151,669 tokens in all.
    """
    from transformers import AddedToken, Qwen2Tokenizer

    if vocab not in VOCABS:
        raise ValueError(f"vocab must be one of {tuple(VOCABS)}, got {vocab!r}")
    if vocab == "real":
        from .qwen_vocab import qwen_vocab_and_merges
        bpe_vocab, merges = qwen_vocab_and_merges()
    else:
        bpe_vocab, merges = _trained_vocab_and_merges()

    # eos/pad/unk are set after the specials exist: passing them to __init__ would register
    # them first and shift every special id.
    tok = Qwen2Tokenizer(vocab=bpe_vocab, merges=merges, unk_token=None, eos_token=None, pad_token=None)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in NON_SPECIAL_ADDED_TOKENS])
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.model_max_length = 262144
    assert len(tok) <= VOCABS[vocab], len(tok)
    return tok


def build_processor(tokenizer, thinking: bool):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    # Qwen3-VL's constants: 16-px patches, 2 frames per temporal patch, 2x2 merge -> 32 px/token.
    common = dict(patch_size=16, temporal_patch_size=2, merge_size=2,
                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 65536, "longest_edge": 16777216}, **common)
    video_processor = Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 25165824}, **common)
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=video_processor, chat_template=qwen3vl_chat_template(thinking))


def build_config(tokenizer, variant: str, vocab_rows: int = MODEL_VOCAB_ROWS):
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    text = dict(vocab_size=vocab_rows, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                 "mrope_section": [4, 2, 2], "mrope_interleaved": True},
                bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    # out_hidden_size must equal the text hidden size; num_position_embeddings a perfect square.
    vision = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=16,
                  temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=64,
                  num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
    if variant == "moe":
        # 2*48 != 64 keeps the fused-expert layouts (published vs transformers 5) distinguishable.
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
                    decoder_sparse_step=1, mlp_only_layers=[])
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    config_cls = Qwen3VLMoeConfig if variant == "moe" else Qwen3VLConfig
    return config_cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_generation_config(tokenizer, thinking: bool):
    from transformers import GenerationConfig

    # The published sampling defaults of Qwen3-VL Instruct / Thinking checkpoints.
    sampling = dict(temperature=1.0, top_p=0.95) if thinking else dict(temperature=0.7, top_p=0.8)
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return GenerationConfig(bos_token_id=endoftext, pad_token_id=endoftext,
                            eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), endoftext],
                            do_sample=True, top_k=20, repetition_penalty=1.0, **sampling)


def build_tiny_qwen3vl(path: str | Path, variant: str = "dense", thinking: bool = False, seed: int = 0,
                       *, vocab: str = "tiny", published_layout: bool = False,
                       max_shard_size: str | None = None) -> Path:
    """Write a tiny random Qwen3-VL checkpoint folder to ``path`` and return it.

    ``variant`` is "dense" (Qwen3VLForConditionalGeneration) or "moe"
    (Qwen3VLMoeForConditionalGeneration); ``thinking`` selects the Thinking chat template.
    ``vocab`` "real" gives Qwen's own 151,643-token BPE and 151,936 embedding rows (~10 s to
    build, 60 MB on disk): the size at which grammar masks cost what they cost in use.
    The same seed gives byte-identical weights (weights are stored in bf16, like real releases).
    ``published_layout`` rewrites the processor files the way the Hub releases ship them;
    ``max_shard_size`` (e.g. "400KB") splits the weights into shards plus an index.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    import torch
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab)
    config = build_config(tokenizer, variant, VOCABS[vocab])
    model_cls = Qwen3VLMoeForConditionalGeneration if variant == "moe" else Qwen3VLForConditionalGeneration
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config = build_generation_config(tokenizer, thinking)
    shard_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(torch.bfloat16).save_pretrained(out, **shard_kwargs)
    build_processor(tokenizer, thinking).save_pretrained(out)
    if published_layout:
        to_published_layout(out)
    return out


def to_published_layout(folder: Path) -> None:
    """transformers-5 processor files -> the files a Qwen3-VL download from the Hub holds:
    preprocessor_config.json (naming the old "Fast" class), video_preprocessor_config.json and
    chat_template.json instead of processor_config.json and chat_template.jinja."""
    processor = json.loads((folder / "processor_config.json").read_text())
    image = dict(processor["image_processor"], image_processor_type="Qwen2VLImageProcessorFast",
                 processor_class="Qwen3VLProcessor")
    video = dict(processor["video_processor"], processor_class="Qwen3VLProcessor")
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
    (folder / "processor_config.json").unlink()
    (folder / "chat_template.jinja").unlink()


def tiny_qwen3vl_folder(base_dir: str | Path, variant: str = "dense", thinking: bool = False, seed: int = 0,
                        vocab: str = "tiny") -> Path:
    """Build once under ``base_dir`` (e.g. pytest's session temp dir) and reuse afterwards."""
    suffix = "" if vocab == "tiny" else f"-{vocab}vocab"
    folder = Path(base_dir) / f"Qwen3-VL-tiny-{variant}-{'Thinking' if thinking else 'Instruct'}-seed{seed}{suffix}"
    if not (folder / "model.safetensors").is_file() or not (folder / "chat_template.jinja").is_file():
        build_tiny_qwen3vl(folder, variant, thinking, seed, vocab=vocab)
    return folder


def weights_sha256(folder: str | Path) -> str:
    """Hash of every weight file in a folder (names and bytes), for determinism checks."""
    digest = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random-weight Qwen3-VL folder.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--variant", choices=VARIANTS, default="dense")
    parser.add_argument("--thinking", action="store_true", help="use the Thinking chat template")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab", choices=tuple(VOCABS), default="tiny",
                        help="'real': Qwen's 151,643-token BPE and 151,936 rows (needs dashscope)")
    args = parser.parse_args(argv)
    folder = build_tiny_qwen3vl(args.out_dir, args.variant, args.thinking, args.seed, vocab=args.vocab)
    print(f"{folder} ({args.variant}, {args.vocab} vocab, {'Thinking' if args.thinking else 'Instruct'}, "
          f"weights sha256 {weights_sha256(folder)[:16]})")


if __name__ == "__main__":
    main()
