"""Constants used across the package, defined once (as timm's ``data/constants.py``)."""

FP_BITS = 32  # the bit width that means full precision (configs, zoo names, results)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Side (pixels) from which an input is ImageNet-sized: random-resized-crop training and
# resize + centre-crop evaluation; below it a small image (CIFAR-style transforms, no crop).
SMALL_IMAGE = 128
# Bounds checked before anything is allocated (a typo of 5e6 labels or a 30000-pixel crop would
# otherwise take gigabytes before failing): a side of the model input, the number of classes.
MAX_IMAGE_SIZE = 2048
MAX_NUM_LABELS = 100_000
# A run directory's files (uniq-hub train): the resolved config, the summary, the best model's latent
# weights (--init-from of a next stage) and its release-format export with the results record.
TRAIN_CONFIG_FILE = "train_config.json"
SUMMARY_FILE = "summary.json"
BEST_DIR = "best"
EXPORT_DIR = "export"
RESULTS_FILE = "eval_results.json"  # an export's (or release folder's) measured numbers
ONNX_FILE = "onnx/model.onnx"  # a model folder's exact integer graph (uniq_hub.export_onnx)
CHECKSUM_KEY = "uniq_hub.sha256"  # uint8[32] tensor in every weight file: sha256 over the others (packing.py)
# Knowledge distillation defaults (train options and the cards that state them)
KD_TEMPERATURE = 4.0
KD_WEIGHT = 0.5
# A release folder's per-image top-1 predictions on its eval split (uniq_hub.hub.portability)
PREDICTIONS_FILE = "eval_predictions.json"
