"""``python -m fmcgm``: headless runs and the paper's evaluation.

    python -m fmcgm run WORKFLOW (--comfyui PATH | --server URL ...) [--set "Title.input=value" ...]
                        [--images DIR] [--output DIR]
    python -m fmcgm evaluate --results DIR --coco NAME ANNOTATIONS IMAGES | --imagefolder NAME DIR ...
                        --vlm-url URL --vlm-model NAME (--comfyui PATH | --server URL ...)
    python -m fmcgm table RESULTS

``evaluate`` and ``table`` need the optional ``eval`` extra (Ray, pyarrow); see
docs/evaluation_at_scale.md. ``run`` needs nothing beyond ComfyUI (or a server to talk to).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path


def _comfy_options(parser: argparse.ArgumentParser, many_servers_help: str) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--comfyui", metavar="PATH",
                       help="the ComfyUI folder to load in this process (its nodes and custom nodes, as main.py)")
    where.add_argument("--server", metavar="URL", action="append",
                       help=f"a running ComfyUI server, e.g. http://127.0.0.1:8188; {many_servers_help}")
    parser.add_argument("--comfyui-args", metavar="ARGS", default="",
                        help="ComfyUI's own command-line options for --comfyui, in one string, e.g. "
                             "\"--extra-model-paths-config paths.yaml --lowvram\"")


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="run a saved workflow headless",
                       description="Run a saved ComfyUI workflow (UI or API format) without the frontend.")
    p.add_argument("workflow", help="the workflow file (.json), as saved from ComfyUI or exported with Export (API)")
    _comfy_options(p, "repeat to spread --images across several servers")
    p.add_argument("--set", metavar="TITLE.INPUT=VALUE", action="append", default=[], dest="assignments",
                   help="set an input by node title and input name, e.g. \"Picture to edit.image=cat.png\" (a "
                        "local picture is uploaded); '#ID.input=v' names a node by id, '*.input=v' every node "
                        "with that input. Repeatable")
    p.add_argument("--images", metavar="DIR", help="run once per picture in DIR, feeding the workflow's picture input")
    p.add_argument("--images-into", metavar="TITLE", help="the node (title) --images feeds, when there are several")
    p.add_argument("--output", metavar="DIR", default="fmcgm-output",
                   help="where the outputs go, named by what they are (default: ./fmcgm-output)")
    p.add_argument("--quiet", action="store_true", help="print failures only")
    p.add_argument("--verbose", action="store_true", help="show ComfyUI's own log")


def open_sessions(args) -> list:
    """The ComfyUI sessions the options name: one in-process, or one client per server."""
    from .runner.client import ComfyClient
    if args.comfyui:
        from .runner.inprocess import InProcessComfy
        return [InProcessComfy(args.comfyui, shlex.split(args.comfyui_args))]
    if args.comfyui_args:
        raise ValueError("--comfyui-args goes with --comfyui; a server was started with its own options")
    return [ComfyClient(url) for url in args.server]


def cmd_run(args) -> int:
    from .runner.run import list_pictures, read_workflow, run_items
    workflow = read_workflow(args.workflow)
    pictures = list_pictures(args.images) if args.images else None
    if args.images_into and not pictures:
        raise ValueError("--images-into goes with --images")
    sessions = open_sessions(args)
    try:
        outcomes = run_items(sessions, workflow, args.assignments, Path(args.output), pictures, args.images_into,
                             quiet=args.quiet)
    except KeyboardInterrupt:
        for session in sessions:
            session.interrupt()
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for session in sessions:
            session.close()
    failed = [o for o in outcomes if o.error]
    if not args.quiet:
        print(f"{len(outcomes) - len(failed)} of {len(outcomes)} run(s) done; outputs in {args.output}", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmcgm", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    from .evaljob import cli as eval_cli
    eval_cli.add_parsers(sub, _comfy_options)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # to say how to rerun the command
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    commands = {"run": cmd_run, **eval_cli.COMMANDS}
    try:
        return commands[args.command](args) or 0
    except (ValueError, FileNotFoundError, ConnectionError, TimeoutError) as error:  # bad input: said, no trace
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
