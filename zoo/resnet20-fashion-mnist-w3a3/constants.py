"""Constants used across the package, defined once (as timm's ``data/constants.py``)."""

FP_BITS = 32  # the bit width that means full precision (configs, zoo names, results)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Side (pixels) from which an input is ImageNet-sized: random-resized-crop training and
# resize + centre-crop evaluation; below it a small image (CIFAR-style transforms, no crop).
SMALL_IMAGE = 128
TRAIN_CONFIG_FILE = "train_config.json"  # in a run directory: the resolved training config
