"""Write the demo Space's example images (spaces/uniq-zoo-demo/examples/): one Fashion-MNIST test item
of a few classes (28x28 PNG, as the dataset has them; MIT, Zalando) and scikit-learn's two sample photos
(CC BY 2.0, credited in the Space's README), scaled down to 320 pixels wide."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image
from sklearn.datasets import load_sample_images

from uniq_hub.training.data.sources import load_image_dataset

OUT = Path(__file__).resolve().parent.parent / "spaces" / "uniq-zoo-demo" / "examples"
CLASSES = ("Ankle boot", "Trouser", "Bag", "Pullover", "Sneaker", "Dress")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ds = load_image_dataset("fashion_mnist", "test")
    names = ds.features["label"].names
    for wanted in CLASSES:
        index = next(i for i, label in enumerate(ds["label"]) if names[label] == wanted)
        slug = re.sub(r"[^a-z0-9]+", "-", wanted.lower()).strip("-")
        ds[index]["image"].save(OUT / f"fashion-mnist-{index:04d}-{slug}.png")
    photos = load_sample_images()
    for name, array in zip(("china", "flower"), photos.images):
        image = Image.fromarray(array)
        image.thumbnail((320, 320))
        image.save(OUT / f"photo-{name}.jpg", quality=85)


if __name__ == "__main__":
    main()
