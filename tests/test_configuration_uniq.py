"""UniQConfig: defaults, validation, serialisation, the QuantConfig it describes, labels."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from uniq_hub import QuantConfig, UniQConfig, imagenet_id2label


def test_defaults_and_derived_preprocessing():
    config = UniQConfig(arch="resnet18", w_bits=2, a_bits=2, num_labels=1000)
    assert config.model_type == "uniq"
    assert (config.first_bits, config.last_bits, config.method, config.num_channels) == (8, 8, "uniq", 3)
    assert (config.image_size, config.crop_pct, config.resize_size) == (224, 0.875, 256)
    assert config.image_mean == [0.485, 0.456, 0.406] and config.image_std == [0.229, 0.224, 0.225]
    assert config.num_labels == 1000 and len(config.id2label) == 1000 and config.label2id["LABEL_7"] == 7

    small = UniQConfig(arch="resnet20", w_bits=4, a_bits=4, num_labels=10, num_channels=1, image_size=28)
    assert (small.crop_pct, small.resize_size) == (1.0, 28)
    assert small.image_mean == [0.5] and small.image_std == [0.5]


def test_quant_config_is_the_same_schema_with_32_for_full_precision():
    config = UniQConfig(
        arch="resnet20", w_bits=3, a_bits=32, last_bits=None, weight_granularity="layer", step_init="0.05",
        overrides={"layer1.*": [2, None]},
    )
    qc = config.quant_config()
    assert isinstance(qc, QuantConfig)
    assert (qc.w_bits, qc.a_bits, qc.first_bits, qc.last_bits) == (3, 32, 8, 32)  # None is read as 32
    assert (qc.weight_granularity, qc.step_init, qc.overrides) == ("layer", 0.05, {"layer1.*": (2, 32)})
    assert config.overrides == {"layer1.*": [2, 32]} and config.last_bits == 32 and config.step_init == 0.05
    assert UniQConfig(arch="resnet20", w_bits=32, a_bits=32).quant_config() is None


def test_json_round_trip(tmp_path):
    config = UniQConfig(
        arch="mobilenetv2", w_bits=4, a_bits=4, id2label={0: "cat", 1: "dog", 2: "bird"}, method="lsq",
        signed_inputs=True, overrides={"classifier": [8, 8]}, image_mean=[0.1, 0.2, 0.3],
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "uniq" and saved["auto_map"]["AutoConfig"] == "configuration_uniq.UniQConfig"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is UniQConfig
    drop = ("_name_or_path",)
    assert {k: v for k, v in loaded.to_dict().items() if k not in drop} == {
        k: v for k, v in config.to_dict().items() if k not in drop
    }
    assert loaded.id2label == {0: "cat", 1: "dog", 2: "bird"} and loaded.label2id == {"cat": 0, "dog": 1, "bird": 2}
    assert loaded.quant_config() == config.quant_config()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(w_bits=9), "w_bits must be an int in 1..8 or 32"),
        (dict(a_bits=0), "a_bits must be an int in 1..8 or 32"),
        (dict(first_bits=16), "first_bits"),
        (dict(w_bits=2.0), "w_bits"),
        (dict(arch="resnet50"), "unknown architecture 'resnet50'"),
        (dict(num_labels=3, id2label={0: "a", 1: "b"}), "id2label has 2 labels but num_labels=3"),
        (dict(num_labels=0), "num_labels must be an int in 1..100000"),
        (dict(num_labels=5_000_000), "num_labels must be an int in 1..100000, got 5000000"),  # before allocating
        (dict(id2label={0: "a", 2: "b"}), "id2label keys must be 0..1"),
        (dict(num_channels=2), "num_channels must be 1 (grayscale) or 3 (RGB), got 2"),
        (dict(num_channels=1), "image_mean must hold 1 numbers"),  # ImageNet default of 3 given explicitly below
        (dict(method="dorefa"), "method must be one of"),
        (dict(weight_granularity="kernel"), "weight_granularity must be one of"),
        (dict(step_init="max"), "UniQConfig.step_init must be 'mse', 'lsq' or a positive number"),
        (dict(step_init=-1.0), "UniQConfig.step_init must be 'mse', 'lsq' or a positive number"),
        (dict(init=-1.0), "UniQConfig.step_init must be 'mse', 'lsq' or a positive number"),  # the older name
        (dict(method="lsq", w_bits=1, a_bits=1), "method 'lsq' has no 1-bit weight quantizer"),
        (dict(overrides={"layer1.*": [1, 2]}, method="lsq"), "method 'lsq' has no 1-bit weight quantizer"),
        (dict(overrides={"fc": [4]}), "overrides['fc'] must be [w_bits, a_bits]"),
        (dict(overrides={"fc": [4, 12]}), "overrides['fc']"),
        (dict(image_size=0), "image_size must be an int in 1..2048"),
        (dict(image_size=20000), "image_size must be an int in 1..2048, got 20000"),
        (dict(crop_pct=1.5), "crop_pct must be in (0, 1]"),
        (dict(image_std=[0.2, 0.0, 0.2]), "image_std must be positive"),
        (dict(grad_scale="yes"), "grad_scale must be a bool"),
    ],
)
def test_invalid_configs_raise_clear_value_errors(kwargs, message):
    if kwargs == dict(num_channels=1):
        kwargs = dict(num_channels=1, image_mean=[0.485, 0.456, 0.406])
    with pytest.raises(ValueError) as info:
        UniQConfig(**kwargs)
    assert message in str(info.value)


def test_invalid_config_json_is_refused(tmp_path):
    UniQConfig(arch="resnet20").save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(path.read_text().replace('"w_bits": 2', '"w_bits": 12'))
    with pytest.raises(ValueError, match="w_bits must be an int in 1..8 or 32"):
        AutoConfig.from_pretrained(tmp_path)


def test_config_json_with_older_key_names_loads_under_the_current_ones(tmp_path):
    """Releases before the shared schema wrote ``init`` and ``in_chans``; they load unchanged."""
    UniQConfig(arch="resnet20", num_channels=1, step_init=0.25, num_labels=10).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    assert "init" not in saved and "in_chans" not in saved and saved["step_init"] == 0.25
    saved["init"], saved["in_chans"] = saved.pop("step_init"), saved.pop("num_channels")
    path.write_text(json.dumps(saved))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert (loaded.step_init, loaded.num_channels, loaded.image_mean) == (0.25, 1, [0.5])
    assert not hasattr(loaded, "init") and not hasattr(loaded, "in_chans")
    assert "init" not in loaded.to_dict() and "in_chans" not in loaded.to_dict()
    conflict = r"'in_chans' \(an older name of 'num_channels'\) is 3 but 'num_channels' is 1"
    with pytest.raises(ValueError, match=conflict):
        UniQConfig(arch="resnet20", in_chans=3, num_channels=1)


def test_imagenet_labels_offline():
    id2label = imagenet_id2label()
    assert len(id2label) == 1000 and sorted(id2label) == list(range(1000))
    assert id2label[0] == "tench, Tinca tinca" and id2label[999].startswith("toilet tissue")
    config = UniQConfig(arch="resnet18", id2label=id2label)
    assert config.num_labels == 1000 and config.id2label[1] == "goldfish, Carassius auratus"
