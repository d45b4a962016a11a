"""``uniq-hub train`` / ``accelerate launch -m uniq_hub.training.train``: train a UniQ model with Accelerate.

The orchestration only; each step is another module's job::

    train_config  resolve the options (zoo < --config file < command line < paper recipe)
    loop          TrainingLoop: set up the run, then train / evaluate / checkpoint / export
    run_data      load the splits (data/: sources, transforms, seeded loaders)
    model_init    build UniQForImageClassification; --init-from (our folders, pytorchcv via convert)
    calibrate     step sizes from the first N batches (quantized runs)
    recipes       optimizer (no decay on steps) + per-step warm-up / cosine schedule
    checkpoint    atomic Accelerate state every N steps and each epoch; --resume mid-epoch
    dynamics      per-quantizer step / std / SQNR every K steps (Figure 4)
    catalog.release_folder   best model in the release format + card -> <run>/export (ready to publish)

Run directory: ``train_config.json`` (resolved), ``log.jsonl`` (metrics), ``dynamics.jsonl``,
``tensorboard/``, ``checkpoints/step-*``, ``best/`` (latent weights, for ``--init-from``),
``export/`` (release folder with ``eval_results.json`` and ``README.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Any

from accelerate import PartialState

from ..catalog.release_folder import ExportIncomplete
from .checkpoint import CheckpointWriteError, RunCheckpointError, RunDirectoryError, hold_run_dir
from .loop import NonFiniteLossError, TrainingLoop
from .run_record import ResumeError
from .train_config import TrainConfig, add_config_arguments, config_from_args

__all__ = ["train", "add_arguments", "run", "main"]


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the training ``cfg`` describes; returns a summary (best top-1, steps, directories).

    When the export's ONNX graph fails its verification (:class:`uniq_hub.catalog.release_folder.ExportIncomplete`),
    the checkpoints, ``best/`` and the PyTorch release are on disk already: the summary is written
    with the error, then the error is raised."""
    # one run per directory: the main process of each machine holds it until the run ends
    with hold_run_dir(cfg.run_dir) if PartialState().is_local_main_process else contextlib.nullcontext():
        trainer = TrainingLoop(cfg)
        try:
            return trainer.fit()
        except ExportIncomplete as err:
            test = {k: err.record.get(k) for k in ("top1", "top5", "num_examples")}
            trainer.write_summary(test, export_dir=err.folder, export_error=str(err))
            raise


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("uniq_hub").setLevel(logging.INFO)
    try:
        summary = train(config_from_args(args))
    except (NonFiniteLossError, RunDirectoryError, RunCheckpointError, CheckpointWriteError, ExportIncomplete,
            ResumeError) as err:
        raise SystemExit(f"uniq-hub train: {err}") from err

    if PartialState().is_main_process:
        best = summary["best_top1"]
        print(f"done: {summary['steps']} steps, best top-1 {best:.2f}%" if best is not None else "done")
        exported = f"; export: {summary['export_dir']}" if summary["export_dir"] else ""
        print(f"run directory: {summary['run_dir']}{exported}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uniq_hub.training.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    from ..network import default_timeout, hub_timeout

    with hub_timeout(default_timeout()):  # `accelerate launch -m uniq_hub.training.train` bypasses the CLI's timeout
        return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
