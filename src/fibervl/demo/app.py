"""The Gradio page: one image, a tab per task the models can do, and the answer beside it.

Each tab has its own input (class names, a text and its phrases, a referring expression, a
question, nothing for a caption) and button; every tab writes the same three outputs: the
predictor's picture (boxes drawn on the image, or the answer under it), a few lines of text and
the JSON result. The elements carry ``elem_id``s (``image``, ``detect-text``, ``detect-run``,
``result-image``, ``result-text``, ``result-json``, ...) that the browser test finds them by.
"""

from __future__ import annotations

import os
import sys

from .models import DemoModels

INSTALL_HINT = "pip install 'fibervl[demo]'"
TAB_NAMES = {"detect": "Detect", "ground": "Ground", "refexp": "Refer", "vqa": "Ask (VQA)", "caption": "Caption"}


def import_gradio():
    """gradio, or a RuntimeError naming the extra that installs it."""
    # No usage statistics or version check sent anywhere: the demo runs offline.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ModuleNotFoundError as err:
        if err.name != "gradio":
            raise
        raise RuntimeError(f"the web demo needs gradio: {INSTALL_HINT}") from None
    return gradio


def build_app(models: DemoModels):
    """The page (a ``gradio.Blocks``) for ``models``: a tab for each task they can do."""
    gr = import_gradio()
    with gr.Blocks(title="fibervl demo", analytics_enabled=False) as app:
        gr.Markdown("## fibervl demo\nUpload an image, pick a task and press its button.\n\n" + _model_list(models))
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"],
                                 buttons=["download", "fullscreen"], elem_id="image")
                inputs = _task_tabs(gr, models)
            with gr.Column():
                # No "share" button: it posts to Hugging Face; nothing leaves this machine.
                picture = gr.Image(type="pil", format="png", label="Result", interactive=False,
                                   buttons=["download", "fullscreen"], elem_id="result-image")
                summary = gr.Textbox(label="Answer", lines=4, max_lines=20, interactive=False, elem_id="result-text")
                result = gr.JSON(label="JSON", elem_id="result-json")
        for task, (button, text_boxes, fields) in inputs.items():
            handler = _handler(gr, getattr(models, task))
            # One prediction at a time over every tab: the model uses all the CPU cores it has.
            options = {"inputs": [image, *fields], "outputs": [picture, summary, result],
                       "concurrency_limit": 1, "concurrency_id": "predict"}
            button.click(handler, **options)
            for box in text_boxes:  # Enter in a text box runs the task too
                box.submit(handler, **options)
    return app


def _task_tabs(gr, models: DemoModels) -> dict:
    """task -> (its button, its text boxes, the inputs its handler takes after the image)."""
    out = {}
    with gr.Tabs():
        for task in models.tasks:
            with gr.Tab(TAB_NAMES[task], id=task):
                if task == "detect":
                    text = gr.Textbox(label="Class names, separated by commas", placeholder="star, heart, circle",
                                      elem_id="detect-text")
                    threshold = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Lowest score shown",
                                          elem_id="detect-threshold")
                    top = gr.Slider(0, 100, value=10, step=1, label="Most boxes shown (0: all above the score)",
                                    elem_id="detect-top")
                    texts, fields = [text], [text, threshold, top]
                elif task == "ground":
                    text = gr.Textbox(label="Text", placeholder="a red star left of a blue circle", elem_id="ground-text")
                    phrases = gr.Textbox(label="Phrases of the text to find, separated by commas (default: the whole "
                                               "text)", placeholder="red star, blue circle", elem_id="ground-phrases")
                    texts, fields = [text, phrases], [text, phrases]
                elif task == "refexp":
                    text = gr.Textbox(label="Referring expression", placeholder="the small red star",
                                      elem_id="refexp-text")
                    texts, fields = [text], [text]
                elif task == "vqa":
                    text = gr.Textbox(label="Question", placeholder="what color is the star?", elem_id="vqa-text")
                    texts, fields = [text], [text]
                else:
                    gr.Markdown("Nothing to type: press the button for a caption of the image.")
                    texts, fields = [], []
                button = gr.Button(TAB_NAMES[task].split(" ")[0], variant="primary", elem_id=f"{task}-run")
            out[task] = (button, texts, fields)
    return out


def _model_list(models: DemoModels) -> str:
    """One line per model directory with the tabs it serves."""
    served: dict = {}
    for task, directory in models.table.items():
        served.setdefault(directory, []).append(TAB_NAMES[task])
    return "\n".join(f"- `{directory}`: {', '.join(tabs)}" for directory, tabs in served.items())


def _handler(gr, predict):
    """``predict(image, *fields) -> Answer`` as a Gradio event handler: a missing image or a
    refused input is shown on the page as an error message, not a stack trace."""

    def handle(image, *fields):
        if image is None:
            raise gr.Error("Upload an image first.")
        try:
            answer = predict(image, *fields)
        except ValueError as err:  # DataError included: an image PIL cannot read as RGB
            raise gr.Error(str(err)) from err
        return answer.picture, answer.summary, answer.result

    return handle


def serve(app, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve ``app`` on ``host:port`` until interrupted (Ctrl-C). Never through a share link:
    nothing leaves this machine."""
    app.queue()
    try:
        # quiet: Gradio's own banner would suggest share=True, which this command never sets.
        _, url, _ = app.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
                               quiet=True, prevent_thread_lock=True)
    except OSError as err:  # e.g. the port is taken
        raise RuntimeError(f"cannot serve on {host}:{port}: {err}") from err
    print(f"fibervl demo: serving on {url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    app.block_thread()
