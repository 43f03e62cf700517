"""The Gradio demo: grade a radiograph, see where the model looked, publish the model.

    python app.py --model outputs/quickstart/run/best [--port 7860]      (or: spine-hf app ...)

Research use only, not a medical device. Importing this module starts nothing; `main()` does.
With a calibrated model folder (`spine-hf calibrate`) the headline also gives the conformal grade
range, and an image unlike the training radiographs is said to be so instead of being graded.
Uploads go through the project's decoder (PNG, JPEG, 16-bit PNG, DICOM), never through Gradio's
image conversion, which would saturate 16-bit images. The server binds 127.0.0.1 unless told
otherwise, and uploads are limited in size and in pixels.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import io
import shutil
import tempfile
import threading
from pathlib import Path

import gradio as gr
from PIL import Image

from spine_hf.data.imaging import ImageDecodeError
from spine_hf.grades import GRADE_NAMES
from spine_hf.models.conformal import range_text
from spine_hf.outputs import publish_file

DEFAULT_MODEL = "outputs/quickstart/run/best"
NOTICE = (
    "**Research use only — not a medical device.** This demo grades radiographs into five ordinal "
    "severity grades for research on methods and data. Do not use it to diagnose or treat anyone."
)
DISPLAY_SIDE = 512
FILE_TYPES = [".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff"]
_predictors: dict[str, object] = {}
_lock = threading.Lock()
_shown_dir: Path | None = None


def load_predictor(model: str):
    """The Predictor for a folder or repo id, loaded once; errors become messages in the app."""
    from spine_hf.predict.inference import Predictor

    model = (model or "").strip()
    if not model:
        raise gr.Error(f"No model given. Train one with the README's quick start (it lands in {DEFAULT_MODEL}).")
    with _lock:
        if model not in _predictors:
            try:
                _predictors[model] = Predictor(model)
            except Exception as err:  # shown in the app instead of crashing it
                raise gr.Error(f"Could not load the model {model!r}: {err}") from err
        return _predictors[model]


def grade(file, show_cam: bool, model: str):
    """Grade one uploaded file: (headline, probabilities, image shown)."""
    if file is None:
        raise gr.Error("Upload a radiograph first (PNG, JPEG, 16-bit PNG or DICOM).")
    predictor = load_predictor(model)
    path = file if isinstance(file, str) else getattr(file, "name", file)
    try:
        image = predictor.canonical(path)
    except ImageDecodeError as err:
        raise gr.Error(f"{Path(err.name).name}: {err.problem}. {err.fix}") from err
    prediction = predictor.predict([image])[0]
    top = prediction.grade
    headline = _headline(prediction)
    label = {f"{i} {name}": p for i, (name, p) in enumerate(zip(GRADE_NAMES, prediction.probabilities, strict=True))}
    if prediction.in_distribution is False:
        label = None  # not shown as if it were a result; the headline says what the model would have said
    shown = image.convert("RGB")
    if show_cam and predictor.model is None:
        gr.Warning("Grad-CAM needs the PyTorch weights; this model is an ONNX export, so the image is shown plain.")
    elif show_cam:
        from spine_hf.predict.explain import grad_cam, overlay

        heat, _ = grad_cam(predictor, image, top)
        shown = overlay(image, heat)
    if max(shown.size) < DISPLAY_SIDE:  # small images are enlarged for the eye only
        scale = DISPLAY_SIDE / max(shown.size)
        shown = shown.resize((round(shown.width * scale), round(shown.height * scale)), Image.Resampling.LANCZOS)
    return headline, label, _shown_file(shown)


def _headline(prediction) -> str:
    """The grade, its probability and range; or, for an image unlike the training data, a plain refusal."""
    top, probability = prediction.grade, prediction.probabilities[prediction.grade]
    if prediction.in_distribution is False:
        return (
            "## Not graded: this image does not look like the radiographs the model was trained on\n"
            f"Do not use its grade (the model would say {top} — {GRADE_NAMES[top]}, {probability:.0%}). "
            f"Out-of-distribution score {prediction.ood_score:.1f}, above the threshold "
            f"{prediction.ood_threshold:.1f} chosen on validation radiographs."
        )
    text = f"## Grade {top} — {GRADE_NAMES[top]}\n{probability:.0%} probability"
    if prediction.grade_range is not None:
        low, high = prediction.grade_range
        names = GRADE_NAMES[low] if low == high else f"{GRADE_NAMES[low]} to {GRADE_NAMES[high]}"
        text += f"; {prediction.coverage:.0%} range: {range_text(low, high)} ({names})"
    return text


def _shown_file(image: Image.Image) -> str:
    """The displayed image as a PNG file written once, atomically, named after its content.

    Handing Gradio a PIL image makes it rewrite a content-named cache file in place
    (`save_pil_to_cache`), so when two requests produce the same picture, one can stream the file
    while the other truncates it: the client gets "peer closed connection without sending complete
    message body" (server side, h11's "Too little data for declared Content-Length"). Gradio copies a
    file path into its cache with a rename instead, and never rewrites an existing copy.
    """
    global _shown_dir
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    with _lock:
        if _shown_dir is None:
            _shown_dir = _scratch_folder("spine-hf-shown-")
    path = _shown_dir / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
    if not path.exists():
        publish_file(path, data)
    return str(path)


def _scratch_folder(prefix: str) -> Path:
    """A new temporary folder that is removed when the process exits (the app serves files from it until then)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def preview_push(model: str, repo_id: str, private: bool):
    """Dry run: which files would go where."""
    from spine_hf.publish.hub import push

    folder = _local_folder(model)
    plan = push(folder, _repo(repo_id), private=private, dry_run=True)
    lines = "\n".join(f"- `{path}` ({size:,} bytes)" for path, size in plan)
    return f"Would upload {len(plan)} files to `{_repo(repo_id)}` ({'private' if private else 'public'}):\n{lines}"


def do_push(model: str, repo_id: str, private: bool, token: str):
    """Push through the same function as `spine-hf push`; the token goes to huggingface_hub only."""
    from spine_hf.publish.hub import push

    folder = _local_folder(model)
    try:
        plan = push(folder, _repo(repo_id), private=private, token=(token or None))
    except ValueError as err:
        raise gr.Error(str(err)) from err
    except Exception as err:  # network, auth: say what failed without echoing anything secret
        raise gr.Error(f"Push failed ({type(err).__name__}). Check the repo id and your token.") from err
    return f"Uploaded {len(plan)} files to https://huggingface.co/{_repo(repo_id)}"


def _local_folder(model: str) -> Path:
    folder = Path((model or "").strip())
    if not folder.is_dir():
        raise gr.Error("Publishing needs a local model folder (e.g. outputs/quickstart/run/best).")
    return folder


def _repo(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if repo_id.count("/") != 1:
        raise gr.Error("Give the repo id as org/name.")
    return repo_id


def make_examples(folder: Path) -> list[str]:
    """One synthetic phantom per grade, made at start-up (reused when the folder already has them)."""
    import shutil

    from spine_hf.data.phantoms import make_phantoms

    targets = [folder / f"synthetic_grade_{grade}_{name}.png" for grade, name in enumerate(GRADE_NAMES)]
    if all(target.is_file() for target in targets):
        return [str(target) for target in targets]
    shutil.rmtree(folder / "pool", ignore_errors=True)
    make_phantoms(folder / "pool", per_grade=1, seed=11, size=224, share_16bit=0.4, second_view=0.0)
    for grade, target in enumerate(targets):
        next((folder / "pool" / f"grade_{grade}").glob("*.png")).replace(target)
    shutil.rmtree(folder / "pool", ignore_errors=True)
    return [str(target) for target in targets]


def build_app(model: str | None = None, examples_dir: str | Path | None = None, publish: bool = True) -> gr.Blocks:
    """The Blocks app; `launch()` is left to the caller. `publish=False` leaves out the tab that pushes the
    model to the Hub (a Space serves a model that is already there)."""
    if model is None:
        model = DEFAULT_MODEL if Path(DEFAULT_MODEL).is_dir() else ""
    examples = make_examples(Path(examples_dir) if examples_dir else _scratch_folder("spine-hf-examples-"))
    with gr.Blocks(title="spine-hf: radiograph severity grading") as app:
        gr.Markdown("# spine-hf — radiograph severity grading")
        gr.Markdown(NOTICE)
        with gr.Row():
            model_box = gr.Textbox(value=model, label="Model (local folder, ONNX export or Hub repo id)", scale=4)
        if not model:
            gr.Markdown(f"No model yet: run the quick start in the README; it writes `{DEFAULT_MODEL}`.")
        with gr.Tab("Grade"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Radiograph (PNG, JPEG, 16-bit PNG or DICOM)", file_types=FILE_TYPES)
                    show_cam = gr.Checkbox(value=True, label="Show where the model looked (Grad-CAM)")
                    run = gr.Button("Grade", variant="primary")
                    gr.Examples(examples=[[e] for e in examples], inputs=[upload], label="Synthetic examples")
                with gr.Column():
                    headline = gr.Markdown()
                    label = gr.Label(num_top_classes=len(GRADE_NAMES), label="Probability of each grade")
                    gr.Markdown(
                        "With a model calibrated by `spine-hf calibrate`, the range holds the true grade for the "
                        "stated share of radiographs like the images it was calibrated on, and an image unlike its "
                        "training radiographs is reported as such instead of graded."
                    )
                    shown = gr.Image(label="Decoded image (Grad-CAM overlay: red = most influential)", type="pil",
                                     interactive=False, height=400)  # fmt: skip
            run.click(grade, inputs=[upload, show_cam, model_box], outputs=[headline, label, shown], api_name="grade")
        if not publish:
            return app
        with gr.Tab("Publish"):
            repo = gr.Textbox(label="Hub repo id (org/name)")
            private = gr.Checkbox(value=True, label="Private repo")
            token = gr.Textbox(label="Hugging Face token (or leave empty to use HF_TOKEN / hf auth login)",
                               type="password")  # fmt: skip
            with gr.Row():
                preview = gr.Button("Preview files (dry run)")
                push_button = gr.Button("Push to the Hub", variant="primary")
            status = gr.Markdown()
            preview.click(preview_push, inputs=[model_box, repo, private], outputs=status, api_name="preview")
            push_button.click(do_push, inputs=[model_box, repo, private, token], outputs=status, api_name="push")
    return app


def build_parser() -> argparse.ArgumentParser:
    """`python app.py` / `spine-hf app` options."""
    parser = argparse.ArgumentParser(description="spine-hf demo app (research use only)")
    parser.add_argument("--model", help=f"model folder or Hub repo id (default: {DEFAULT_MODEL} if present)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--max-file-size", default="50mb", help="largest upload accepted")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    build_app(args.model).launch(server_name=args.host, server_port=args.port, max_file_size=args.max_file_size)


if __name__ == "__main__":
    main()
