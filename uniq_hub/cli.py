"""``uniq-hub`` console script. Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int | None``; modules are imported lazily."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "zoo": ("uniq_hub.catalog.zoo", "list the model zoo"),
    "train": ("uniq_hub.training.train", "train a UniQ model with Accelerate"),
    "evaluate": ("uniq_hub.training.evaluate", "top-1 / top-5 of a model on a dataset split"),
    "publish": ("uniq_hub.hub.publish", "upload an exported model folder to the Hub"),
    "publish-zoo": ("uniq_hub.hub.zoo_release", "upload every release folder of zoo/ to its uniq/<name> repo"),
    "publish-space": ("uniq_hub.space", "upload the demo Space (spaces/uniq-zoo-demo) to a Space repo"),
    "plot": ("uniq_hub.plot", "plot training dynamics and accuracy against bits"),
    "export-onnx": ("uniq_hub.deploy.onnx_cli", "write the exact integer ONNX graph (onnx/model.onnx)"),
    "predict": ("uniq_hub.deploy.predict", "top classes of images with torch, ONNX Runtime or OpenVINO"),
    "migrate": ("uniq_hub.hub.migrate", "re-save model folders of older versions with this one (metadata, code, ONNX)"),
}


DEBUG_ENV = "UNIQ_HUB_DEBUG"  # set to 1: tracebacks instead of one-line errors (as --debug)


def _known_errors() -> tuple[type[BaseException], ...]:
    """What a command raises for bad input or an unreachable Hub (one line); anything else is a bug
    and keeps its traceback."""
    from .network import network_errors

    return (ValueError, OSError, ImportError, KeyError, FloatingPointError, *network_errors())


def main(argv: list[str] | None = None) -> int:
    """Run one command. Known errors end with one line on stderr (``uniq-hub COMMAND: Error: message``)
    and exit status 1; ``--debug`` (or ``UNIQ_HUB_DEBUG=1``) shows the traceback instead. Every
    Hub request has a timeout (``UNIQ_HUB_TIMEOUT``, default 60 s; ``publish --timeout``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(prog="uniq-hub", description="UniQ low-bit image classifiers",
                                     epilog=f"--debug (anywhere) or {DEBUG_ENV}=1: show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    from .network import default_timeout, hub_timeout

    try:
        with hub_timeout(default_timeout()):
            return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except SystemExit as err:  # a command's own one-line message
        if debug and err.__context__ is not None and not isinstance(err.code, int):
            raise err.__context__ from None
        raise
    except KeyboardInterrupt:
        raise SystemExit(f"uniq-hub {args.command}: interrupted") from None
    except _known_errors() as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or repr(err)
        raise SystemExit(f"uniq-hub {args.command}: {type(err).__name__}: {message} "
                         f"(--debug or {DEBUG_ENV}=1 for the traceback)") from None


if __name__ == "__main__":
    sys.exit(main())
