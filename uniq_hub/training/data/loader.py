"""The seeded loader of ``(pixel_values, labels)`` batches (:func:`make_dataloader`): images
decoded in the collate function so a corrupt one is named (:func:`decode_image`), augmentation
seeded per batch so a resumed epoch draws what the uninterrupted one drew."""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import torch
from datasets import Dataset, IterableDataset
from datasets import Image as ImageFeature
from torch.utils.data import DataLoader, get_worker_info

from .columns import AnyDataset, detect_columns

__all__ = ["decode_image", "make_dataloader"]

def decode_image(value: Any, feature: ImageFeature | None = None, source: str = "dataset") -> Any:
    """An undecoded ``Image`` value (``{"bytes", "path"}``) decoded by ``datasets``; errors name the
    file (or the dataset when the image has no path). Anything else is returned as is."""
    if not isinstance(value, dict):
        return value
    try:
        return (feature or ImageFeature()).decode_example(value)
    except Exception as err:  # noqa: BLE001  (PIL / fsspec raise many types)
        where = value.get("path") or f"an image of {len(value.get('bytes') or b'')} bytes"
        raise ValueError(f"{where} (dataset {source!r}): not a readable image ({type(err).__name__}: {err})") from err


class _Collate:
    """Rows -> ``(pixel_values NCHW float, labels long)``. In the main process random transforms draw
    from a private seeded generator (global RNG untouched); in workers the DataLoader seeds them.
    Images are decoded here, so a corrupt one is named; labels go through ``label_map`` when given."""

    def __init__(self, transform: Callable, image_column: str | int, label_column: str | int, seed: int,
                 label_map: Sequence[int] | None = None, source: str = "dataset"):
        self.transform, self.image_column, self.label_column = transform, image_column, label_column
        self.label_map, self.source = None if label_map is None else list(label_map), source
        self.generator = torch.Generator().manual_seed(seed)

    def start_epoch(self, seed: int, batches_done: int = 0) -> None:
        """Augmentation seeds as a function of ``(seed, batch)``: reseed, then skip the batches done
        (a resumed epoch draws what the uninterrupted one drew; main-process loading)."""
        self.generator.manual_seed(seed)
        for _ in range(batches_done):  # one draw per batch, as __call__ draws
            torch.randint(0, 2**62, (1,), generator=self.generator)

    def _label(self, value: Any) -> int:
        label = int(value)
        return label if self.label_map is None else self.label_map[label]

    def _apply(self, rows: list) -> tuple[torch.Tensor, torch.Tensor]:
        images = [decode_image(row[self.image_column], source=self.source) for row in rows]
        pixels = torch.stack([torch.as_tensor(self.transform(image)) for image in images])
        labels = torch.tensor([self._label(row[self.label_column]) for row in rows], dtype=torch.long)
        return pixels.float(), labels

    def __call__(self, rows: list) -> tuple[torch.Tensor, torch.Tensor]:
        if get_worker_info() is not None:
            return self._apply(rows)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        python_state = random.getstate()  # timm's RandomErasing draws from Python's RNG
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                return self._apply(rows)
        finally:
            random.setstate(python_state)


def make_dataloader(dataset: AnyDataset | torch.utils.data.Dataset, transform: Callable, batch_size: int,
                    shuffle: bool, num_workers: int = 0, seed: int = 0, drop_last: bool = False, *,
                    image_column: str | None = None, label_column: str | None = None,
                    shuffle_buffer: int = 10_000, label_map: Sequence[int] | None = None,
                    source: str = "dataset") -> DataLoader:
    """DataLoader of ``(pixel_values, labels)`` batches, deterministic given ``seed``.

    ``dataset``: a map-style or streaming ``datasets`` dataset (columns detected as in
    :func:`.sources.load_image_dataset`), or any torch dataset of ``(image, label)`` pairs. Streaming
    datasets are shuffled with a ``shuffle_buffer``-sized buffer. ``label_map``: dataset label id ->
    model label id (:func:`.columns.label_mapping`). ``source`` names the dataset in errors.
    """
    if isinstance(dataset, (Dataset, IterableDataset)):
        image, label = detect_columns(dataset, image_column, label_column)
        dataset = dataset.select_columns([image, label])  # do not decode unused image columns
        feature = (dataset.features or {}).get(image)
        if isinstance(feature, ImageFeature) and feature.decode and feature.mode is None:
            dataset = dataset.cast_column(image, ImageFeature(decode=False))  # decoded (and named) in _Collate
    else:
        image, label = 0, 1
    generator = torch.Generator().manual_seed(seed)
    collate = _Collate(transform, image, label, seed, label_map=label_map, source=source)
    kwargs: dict[str, Any] = dict(batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                                  collate_fn=collate, generator=generator, persistent_workers=False)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if shuffle and isinstance(dataset, IterableDataset):
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer)
        return DataLoader(dataset, **kwargs)
    return DataLoader(dataset, shuffle=shuffle, **kwargs)
