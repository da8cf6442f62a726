#!/usr/bin/env python3
"""One real causal edit on the miniature world, in-process (no server): do(weather = sunny) on a rainy
picture, rendered by CSG with the trained tiny SDXL that ships in models/.

    python scripts/miniworld_demo.py [--out demo-output/miniworld] [--concept weather --value sunny]

Writes the input picture, the world's graph JSON, the manipulator's propagated values, the graph
drawing, CSG's masks, the counterfactual and a side-by-side picture (see fmcgm/miniworld/demo.py),
and prints the oracle's reading of the result.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

from tests.comfy_harness import bootstrap  # noqa: E402  (ComfyUI importable, CPU, one thread)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "demo-output" / "miniworld")
    p.add_argument("--checkpoint", type=Path, help="default: models/fmcgm-miniworld-sdxl.safetensors")
    p.add_argument("--concept", default="weather")
    p.add_argument("--value", default="sunny")
    p.add_argument("--protect", type=float, default=0.0, help="non-descendant protection strength (0 = off)")
    a = p.parse_args()
    bootstrap()
    from fmcgm.miniworld.demo import make_demo
    result = make_demo(a.out, a.checkpoint, concept=a.concept, value=a.value, protect=a.protect)
    print(result["report"])
    for name, path in result["files"].items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
