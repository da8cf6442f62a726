#!/usr/bin/env python3
"""Train the miniature world's tiny SDXL on the CPU (see fmcgm/miniworld/train.py).

    python scripts/train_miniworld.py --work .cache/miniworld-train            # all stages, resumable
    nohup python scripts/train_miniworld.py --work .cache/miniworld-train > train.log 2>&1 &

Re-running with the same --work continues from the last saved state; the result is the same as an
uninterrupted run. The exported checkpoint is WORK/miniworld.safetensors unless --out says otherwise.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

from fmcgm.runner.lanes import import_lane_comfy  # noqa: E402

import_lane_comfy("cpu", threads=1)  # the lane's ComfyUI importable: CPU, one thread

from fmcgm.miniworld.train import main  # noqa: E402

if __name__ == "__main__":
    main()
