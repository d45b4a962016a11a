"""UniQ zoo demo (a Hugging Face Space): one image, every bit-width's top-3 side by side, with each
model's size on disk and its measured latency.

Each model runs on its exact integer ONNX graph (``onnx/model.onnx``, through ``uniq_hub.deploy.onnx_runtime``:
numpy, PIL and ONNX Runtime / OpenVINO, no torch) where the repo has one, otherwise on PyTorch through
transformers' remote code (``trust_remote_code=True``: the repo carries its code, uniq_hub is not needed).

The models are the ``models:`` list of this Space's README.md (the Hub links them to the Space), or
``--models`` / ``UNIQ_SPACE_MODELS`` (comma-separated): Hub repo ids or local release folders.

    python app.py                                        # the README's models, from the Hub
    python app.py --models zoo/resnet20-fashion-mnist-w2a2 zoo/resnet20-fashion-mnist-w1a1 --port 7860
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from huggingface_hub import snapshot_download
from huggingface_hub.repocard import metadata_load
from PIL import Image

HERE = Path(__file__).resolve().parent
EXAMPLES = sorted(str(p) for p in (HERE / "examples").glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
TOP_K = 3
WARMUP_RUNS = 5  # latency at load: median of this many runs on the first example
TABLE_HEADERS = ["model", "bits", "runtime", "weights on disk", "latency (ms)", "top-1"]
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # an upload larger than this is refused before it is read
MAX_PIXELS = 25_000_000  # and an image of more pixels before it is decoded (a 12000x12000 PNG: 4.9 GB)


@dataclass
class DemoModel:
    """One model of the demo: how it is labelled, what it costs, and how to run it."""

    name: str  # the Hub id or folder it came from
    bits: str  # "W2A2", "FP32", "W3A4" ...
    runtime: str
    weights_bytes: int  # model.safetensors (the packed low-bit codes) on disk
    graph_bytes: int  # onnx/model.onnx on disk (0 when it runs on PyTorch)
    classify: Callable[[Image.Image], list[dict[str, Any]]]  # -> [{"label", "score"}, ...] best first
    load_latency_ms: float = 0.0

    @property
    def title(self) -> str:
        return f"{self.bits} · {self.name.rsplit('/', 1)[-1]}"


def readme_models(readme: Path = HERE / "README.md") -> list[str]:
    """The ``models:`` list of the Space card."""
    return list(metadata_load(readme).get("models") or []) if readme.is_file() else []


def resolve(model: str) -> Path:
    """A local folder as is; a Hub repo id downloaded (release repos are a few MB)."""
    if Path(model).is_dir():
        return Path(model)
    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.py", "onnx/*"]))


def _bits(config: dict[str, Any]) -> str:
    w, a = config.get("w_bits", 32), config.get("a_bits", 32)
    return "FP32" if (w, a) == (32, 32) else f"W{w}A{a}"


def _onnx_classifier(folder: Path) -> tuple[Callable, str] | None:
    """The exact ONNX graph's classifier, or None (no graph, no runtime, or a graph that must not run)."""
    if not (folder / "onnx" / "model.onnx").is_file():
        return None
    try:
        from uniq_hub.deploy.onnx_runtime import OnnxImageClassifier

        clf = OnnxImageClassifier(folder)
    except (ImportError, ValueError) as err:  # GraphError is a ValueError: refused graphs fall back to PyTorch
        print(f"[demo] {folder}: ONNX graph not used ({err}); running PyTorch")
        return None
    return (lambda image: clf(image, top_k=TOP_K)), f"ONNX exact int8 ({clf.backend})"


def _torch_classifier(folder: Path) -> tuple[Callable, str]:
    from transformers import pipeline

    remote = (folder / "modeling_uniq.py").is_file()  # Hub repos carry the code; zoo/ release folders do not
    if not remote:
        import uniq_hub  # noqa: F401  (the installed library registers model_type "uniq" with transformers)
    pipe = pipeline("image-classification", model=str(folder), trust_remote_code=remote)
    return (lambda image: pipe(image, top_k=TOP_K)), "PyTorch (transformers)"


def load_model(model: str) -> DemoModel:
    folder = resolve(model)
    config = json.loads((folder / "config.json").read_text())
    found = _onnx_classifier(folder)
    classify, runtime = found if found is not None else _torch_classifier(folder)
    graph = folder / "onnx" / "model.onnx"
    weights = folder / "model.safetensors"
    return DemoModel(
        name=model, bits=_bits(config), runtime=runtime,
        weights_bytes=weights.stat().st_size if weights.is_file() else 0,
        graph_bytes=graph.stat().st_size if found is not None else 0, classify=classify,
    )


def _timed(model: DemoModel, image: Image.Image) -> tuple[list[dict[str, Any]], float]:
    start = time.perf_counter()
    result = model.classify(image)
    return result, 1000.0 * (time.perf_counter() - start)


def load_models(models: list[str]) -> list[DemoModel]:
    loaded = [load_model(m) for m in models]
    probe = Image.open(EXAMPLES[0]) if EXAMPLES else Image.new("L", (28, 28))
    for model in loaded:  # one warm-up run, then the median latency of a single image, preprocessing included
        _timed(model, probe)
        model.load_latency_ms = statistics.median(_timed(model, probe)[1] for _ in range(WARMUP_RUNS))
    return loaded


def _kb(num_bytes: int) -> str:
    return f"{num_bytes / 1024:.1f} KB"


def classify_all(models: list[DemoModel], image: Image.Image | None) -> list[Any]:
    """One ``{label: score}`` per model (gr.Label) and the table rows, in the order of ``models``."""
    if image is None:
        raise gr.Error("Upload an image or pick an example first.")
    labels, rows = [], []
    for model in models:
        result, ms = _timed(model, image)
        labels.append({r["label"]: float(r["score"]) for r in result})
        size = _kb(model.weights_bytes) + (f" (+ ONNX {_kb(model.graph_bytes)})" if model.graph_bytes else "")
        rows.append([model.name, model.bits, model.runtime, size, round(ms, 2), result[0]["label"]])
    return [*labels, rows]


def open_image(path: str | None) -> Image.Image | None:
    """The uploaded file as an image, its size checked from the header before anything is decoded."""
    if path is None:
        return None
    image = Image.open(path)  # reads the header only
    if image.width * image.height > MAX_PIXELS:
        raise gr.Error(f"The image is {image.width}x{image.height} pixels; this demo takes at most {MAX_PIXELS:,}.")
    image.load()
    return image


def build_demo(models: list[str] | None = None) -> gr.Blocks:
    models = models or readme_models()
    if not models:
        raise ValueError("no models: list them under `models:` in README.md, or pass --models")
    loaded = load_models(models)
    with gr.Blocks(title="UniQ low-bit zoo") as demo:
        gr.Markdown(
            "# UniQ low-bit image classifiers, side by side\n"
            "The same image through every bit-width of the zoo: top-3 of each model, the size of its weights "
            "on disk and the time it took (this image, preprocessing included). Quantized models run their "
            "exact integer ONNX graph without torch; the others run on PyTorch. The Fashion-MNIST models know "
            "10 kinds of clothing: a photo of anything else shows what each bit-width makes of it."
        )
        with gr.Row():
            image = gr.Image(type="filepath", label="image", value=EXAMPLES[0] if EXAMPLES else None, height=280)
            with gr.Column():
                button = gr.Button("Classify", variant="primary")
                if EXAMPLES:
                    gr.Examples(EXAMPLES, inputs=image, label="examples (Fashion-MNIST test items and real photos)")
        with gr.Row():
            outputs = [gr.Label(num_top_classes=TOP_K, label=m.title) for m in loaded]
        table = gr.Dataframe(headers=TABLE_HEADERS, label="size and latency", interactive=False)
        gr.Markdown("Latency at start-up (median of %d runs, one image): %s" % (
            WARMUP_RUNS, ", ".join(f"{m.bits} {m.load_latency_ms:.2f} ms" for m in loaded)))

        def run(path: str | None) -> list[Any]:
            return classify_all(loaded, open_image(path))

        button.click(run, inputs=image, outputs=[*outputs, table], api_name="classify")
        image.upload(run, inputs=image, outputs=[*outputs, table], api_name=False)
        demo.load(run, inputs=image, outputs=[*outputs, table], api_name=False)  # the first example's results
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="Hub repo ids or release folders (default: README's models)")
    # 127.0.0.1 unless told otherwise: a Space sets GRADIO_SERVER_NAME itself
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args(argv)
    env = [m for m in os.environ.get("UNIQ_SPACE_MODELS", "").split(",") if m]
    serve(build_demo(args.models or env or None), args.host, args.port)


def serve(demo: gr.Blocks, host: str, port: int, **kwargs: Any) -> None:
    """Launch the demo with its upload cap (``MAX_UPLOAD_BYTES``)."""
    demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD_BYTES, **kwargs)


if __name__ == "__main__":
    main()
