"""``uniq-hub`` console script. Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int | None``; modules are imported lazily."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "zoo": ("uniq_hub.zoo", "list the model zoo"),
    "train": ("uniq_hub.train", "train a UniQ model with Accelerate"),
    "evaluate": ("uniq_hub.evaluate", "top-1 / top-5 of a model on a dataset split"),
    "publish": ("uniq_hub.publish", "upload an exported model folder to the Hub"),
    "publish-zoo": ("uniq_hub.zoo_release", "upload every release folder of zoo/ to its uniq/<name> repo"),
    "publish-space": ("uniq_hub.space", "upload the demo Space (spaces/uniq-zoo-demo) to a Space repo"),
    "plot": ("uniq_hub.plot", "plot training dynamics and accuracy against bits"),
    "export-onnx": ("uniq_hub.onnx_export", "write the exact integer ONNX graph (onnx/model.onnx)"),
    "predict": ("uniq_hub.predict", "top classes of images with torch, ONNX Runtime or OpenVINO"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="uniq-hub", description="UniQ low-bit image classifiers")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
