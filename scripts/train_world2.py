#!/usr/bin/env python3
"""Train the second miniature world's tiny SDXL (text encoders included); see fmcgm/miniworld/train2.py.

Three steps, so that training can run on a machine without this pack's ComfyUI set-up:

    python scripts/train_world2.py spec --out W/world2_spec.json           # here: UNet config + token table
    python scripts/train_world2.py train --spec W/world2_spec.json --out W --comfy-root PATH \
        --device cuda --vae-seconds 90 --unet-seconds 330 --workers 16     # anywhere with torch + ComfyUI's source
    python scripts/train_world2.py export --states W --out models/fmcgm-miniworld2-sdxl.safetensors   # here
    python scripts/train_world2.py ground --checkpoint models/fmcgm-miniworld2-sdxl.safetensors --out G \
        --seconds 5400                      # here: ground the phrases in their regions (grounding2.py)

``train`` imports only ComfyUI's model classes (UNet, CLIP, VAE) from --comfy-root, not comfy.sd.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("spec", help="write the device spec (needs this pack's ComfyUI set-up)")
    s.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train", help="train (GPU or CPU) in a wall-clock budget")
    t.add_argument("--spec", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True, help="folder for the state files and the log")
    t.add_argument("--comfy-root", type=Path, required=True, help="a ComfyUI source folder (holding comfy/)")
    t.add_argument("--v1-checkpoint", type=Path, default=REPO / "models" / "fmcgm-miniworld-sdxl.safetensors",
                   help="the first world's checkpoint: its VAE is the starting point")
    t.add_argument("--device", default="cpu")
    for name, kind in (("seed", int), ("scenes", int), ("workers", int), ("vae_seconds", float), ("vae_batch", int),
                       ("vae_lr", float), ("unet_seconds", float), ("batch", int), ("lr", float), ("max_steps", int)):
        t.add_argument("--" + name.replace("_", "-"), type=kind)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--resume", type=Path, help="a finished run's state folder: continue its UNet and text encoders")
    gr = sub.add_parser("ground", help="fine-tune a checkpoint with the token grounding loss (needs this pack's ComfyUI set-up)")
    gr.add_argument("--checkpoint", type=Path, required=True)
    gr.add_argument("--out", type=Path, required=True, help="folder for the state files and the log")
    for name, kind in (("seconds", float), ("batch", int), ("lr", float), ("weight", float), ("scenes", int),
                       ("seed", int), ("workers", int), ("save_seconds", float), ("max_steps", int)):
        gr.add_argument("--" + name.replace("_", "-"), type=kind)
    gr.add_argument("--threads", type=int, default=1)
    gr.add_argument("--resume", type=Path, help="a state folder of an earlier grounding run: go on from it")
    gr.add_argument("--target", choices=("touched", "coverage"), help="the cells a region touches (default), "
                    "or each cell weighed by the share of it the region covers")
    e = sub.add_parser("export", help="write the checkpoint from the state files (needs this pack's ComfyUI set-up)")
    e.add_argument("--states", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if a.command == "train":
        import torch
        torch.set_num_threads(a.threads)
        from fmcgm.runner.boot import import_model_classes
        import_model_classes(a.comfy_root, a.device)  # comfy.sd's full import cannot run on the device machine
        from fmcgm.miniworld import train2
        keys = ("seed", "scenes", "workers", "vae_seconds", "vae_batch", "vae_lr", "unet_seconds", "batch", "lr", "max_steps", "resume")
        train2.run(json.loads(a.spec.read_text()), a.out, a.v1_checkpoint, a.device,
                   **{k: getattr(a, k) for k in keys if getattr(a, k) is not None})
        return
    from fmcgm.runner.lanes import import_lane_comfy
    import_lane_comfy()  # the lane's ComfyUI importable: CPU, one thread
    from fmcgm.miniworld import train2
    if a.command == "ground":
        import torch
        torch.set_num_threads(a.threads)
        from fmcgm.miniworld import grounding2
        keys = ("batch", "lr", "weight", "scenes", "seed", "workers", "save_seconds", "max_steps", "resume", "target")
        grounding2.finetune(a.checkpoint, a.out, a.seconds or 3600.0,
                            **{k: getattr(a, k) for k in keys if getattr(a, k) is not None})
    elif a.command == "spec":
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(train2.device_spec()))
        print(f"wrote {a.out}")
    elif a.command == "export":
        path = train2.export(a.states, a.out)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
