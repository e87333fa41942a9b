"""``fibervl demo``: serve the web page of :mod:`fibervl.demo` on this machine.

    fibervl demo --model runs/default                       # a fibervl run: every task's own stage
    fibervl demo --model DET_DIR --model VQA_DIR --port 8080
"""

from __future__ import annotations

import argparse
import sys


def add_demo_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo", help="a web page: detection, grounding, VQA, captions on an uploaded image (fibervl demo -h)",
        description="Serve a web page (Gradio; pip install 'fibervl[demo]') where you upload an image and "
                    "detect class names, ground a phrase, find a referring expression, ask a question or get a "
                    "caption, with the boxes drawn on the image. See docs/demo.md.",
    )
    p.add_argument("--model", action="append", required=True, metavar="DIR",
                   help="a model directory (its card says which tasks it can do) or a `fibervl run` output "
                        "directory (each task from its own stage: stages/detection, stages/vqa, ...). Repeatable: "
                        "the first --model that can do a task serves it")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda")
    return p


def run_demo(args: argparse.Namespace) -> int:
    from ..engine.distributed import resolve_device
    from .app import build_app, import_gradio, serve
    from .models import DemoModels, find_models

    import_gradio()  # before loading any model: a missing extra is said at once
    table = find_models(args.model)
    for task, directory in table.items():
        print(f"fibervl demo: {task:8s} {directory}", file=sys.stderr)
    models = DemoModels(table, resolve_device(args.device))
    serve(build_app(models), args.host, args.port)
    return 0
