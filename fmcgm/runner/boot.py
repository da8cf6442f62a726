"""ComfyUI importable in this process: the one place that loads it (``InProcessComfy``, the test
harness, the training scripts, the demo and the benchmarks all come through here).

``import_comfy`` does what ComfyUI's main.py does before anything reads its options: ComfyUI's
folder first on ``sys.path`` (its ``nodes``, ``utils`` and ``server`` before any folder of that
name), its command line parsed into ``comfy.cli_args.args``, its ``utils`` package imported
before ``comfy/`` goes on the path and shadows that name, and the CPU chosen when there is no
accelerator. ComfyUI reads its options once, when first imported, so a process imports one
ComfyUI with one set of options; asking again with the same ones is free.

``import_model_classes`` is the narrow way in: ComfyUI's model classes only (``comfy.ldm``,
``comfy.ops``, ``comfy.sdxl_clip``), for training on a machine where the full import cannot run.

Where the two ComfyUI versions the pack is tested with differ (``new_executor``), the
difference is handled here.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("fmcgm.runner")

_imported: Optional[tuple[Path, tuple[str, ...]]] = None  # (root, options) of the ComfyUI imported here


def check_comfy_folder(path) -> Path:
    root = Path(path).expanduser().resolve()
    if not (root / "main.py").is_file() or not (root / "nodes.py").is_file() or not (root / "comfy").is_dir():
        raise FileNotFoundError(f"--comfyui {path}: not a ComfyUI folder (no main.py, nodes.py and comfy/ in "
                                f"{root}); give the folder you start ComfyUI from")
    return root


def import_comfy(comfy_root, comfy_args: Sequence[str] = (), threads: Optional[int] = None):
    """Import ComfyUI from ``comfy_root`` with its command-line options ``comfy_args`` (``--cpu``
    for the CPU whatever is installed); returns its parsed ``args``. ``threads`` sets torch's
    CPU threads (one on a small shared machine; None leaves torch's choice)."""
    global _imported
    root = check_comfy_folder(comfy_root)
    wanted = (root, tuple(comfy_args))
    if _imported is not None:
        if _imported != wanted:
            raise RuntimeError(f"ComfyUI from {_imported[0]} with options {' '.join(_imported[1])!r} is already "
                               f"loaded in this process, so {' '.join(comfy_args)!r} from {root} cannot apply; "
                               "one ComfyUI per process: use a fresh process")
        return _set_threads(threads, _args())
    if "comfy.cli_args" in sys.modules:  # imported behind our back: its options are already parsed
        raise RuntimeError("ComfyUI was already imported in this process by other code, so its options "
                           f"{' '.join(comfy_args)!r} cannot apply; open the session in a fresh process")
    _first_on_path(root)
    import comfy.options
    comfy.options.enable_args_parsing()  # as main.py: folder_paths and model management read the parsed args
    saved, sys.argv = sys.argv, [str(root / "main.py"), *comfy_args]
    try:
        from comfy.cli_args import args
    except SystemExit:  # argparse has printed what is wrong with the arguments
        raise ValueError(f"ComfyUI refused the arguments {' '.join(comfy_args)!r} (see above)") from None
    finally:
        sys.argv = saved
    import utils.extra_config  # noqa: F401  (ComfyUI's utils package, before comfy/ shadows `utils`)
    import torch
    if not args.cpu and not torch.cuda.is_available() and not _other_accelerator(torch):
        log.info("no GPU found: ComfyUI runs on the CPU (--cpu)")
        args.cpu = True
    _imported = wanted
    return _set_threads(threads, args)


def import_model_classes(comfy_root, device: str = "cpu"):
    """ComfyUI's model classes only, from a source folder, for training where comfy.sd's full
    import cannot run (the GPU device machine: transformers 5 without CLIPTokenizer, no torchsde).

    ComfyUI's default options (none parsed from a command line), with ``cpu`` set for ``device``
    "cpu" and PyTorch's attention, as the tests run. ``comfy.sd1_clip`` imports transformers'
    CLIPTokenizer at module level and training never calls it (captions come pre-tokenised), so
    where it is missing a placeholder module stands for transformers in this process. Returns
    ComfyUI's ``args``."""
    global _imported
    root = Path(comfy_root).expanduser().resolve()
    if not (root / "comfy" / "cli_args.py").is_file():
        raise FileNotFoundError(f"{comfy_root}: not a ComfyUI source folder (no comfy/cli_args.py in {root}); "
                                "give the folder that holds ComfyUI's comfy/ package")
    wanted = (root, ("model classes only", f"device={device}"))
    if _imported == wanted:
        return _args()
    if _imported is not None or "comfy.cli_args" in sys.modules:
        raise RuntimeError(f"ComfyUI is already imported in this process, so its model classes cannot be imported "
                           f"for training from {root}: use a fresh process")
    _first_on_path(root)
    try:
        from transformers import CLIPTokenizer  # noqa: F401
    except ImportError as error:
        import types
        log.warning("transformers' CLIPTokenizer unavailable (%s); tokenizers are not needed for training", error)
        sys.modules["transformers"] = types.ModuleType("transformers", "placeholder: CLIPTokenizer is never called")
        sys.modules["transformers"].CLIPTokenizer = None
    from comfy.cli_args import args
    args.cpu = device == "cpu"
    args.use_pytorch_cross_attention = True
    _imported = wanted
    return args


def new_executor(server):
    """ComfyUI's PromptExecutor with the classic cache, sending its events to ``server``
    ("ram_inactive" is 0.33's cache argument; 0.3.75 ignores it)."""
    import execution
    return execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                    cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})


def run_prompt(executor, prompt: dict, extra_data: dict, run_until_complete, all_outputs: bool = True):
    """Validate an API-format prompt as ComfyUI's /prompt does, then execute it with ``executor``.
    Returns (prompt_id, None) after a run, or (None, (error, node_errors)) when validation refused it,
    or when ``all_outputs`` and some outputs are invalid (ComfyUI would run the valid ones only).
    ``run_until_complete`` runs the validation coroutine (an event loop's, or ``asyncio.run``)."""
    import uuid

    import execution
    prompt_id = str(uuid.uuid4())
    valid = run_until_complete(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0] or (all_outputs and valid[3]):
        return None, (valid[1] or {"message": "some outputs of the prompt are invalid"}, valid[3])
    executor.execute(prompt, prompt_id, extra_data, valid[2])
    return prompt_id, None


def _first_on_path(root: Path) -> None:
    """ComfyUI's folder first, so its ``nodes``, ``utils``, ``server`` and ``comfy`` win over any of that name."""
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))


def _args():
    from comfy.cli_args import args
    return args


def _set_threads(threads: Optional[int], args):
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
    return args


def _other_accelerator(torch) -> bool:
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool((mps and mps.is_available()) or (xpu and xpu.is_available()))
