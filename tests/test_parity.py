"""Parity with transformers image classifiers: problem types, hidden states, the base model
(``AutoModel``), new-label fine-tuning, meta-device init, the ``Trainer``, tracing."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForImageClassification
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from tiny_models import tiny_model
from train_helpers import eager_kernels  # noqa: F401
from uniq_hub import (
    CheckpointError,
    UniQConfig,
    UniQForImageClassification,
    UniQImageProcessor,
    UniQModel,
    calibrate,
    list_models,
    quantizers,
)
from uniq_hub.model.packing import CHECKSUM_KEY
from uniq_hub.training.data.fashion_mnist import FASHION_MNIST_DIR, read_idx

X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
HEAD = "model.fc."


def tiny(**kwargs) -> UniQForImageClassification:
    """A calibrated resnet20 (random weights) in eval mode."""
    return tiny_model(**{"num_labels": 4, "image_size": 16, **kwargs}, calibration=(8, 16))


def backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(HEAD)}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------------------------
# problem_type


@pytest.mark.parametrize(
    ("problem_type", "num_labels", "labels", "reference"),
    [
        (None, 4, torch.tensor([0, 3, 1, 2]), F.cross_entropy),
        ("multi_label_classification", 4, torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]]),
         F.binary_cross_entropy_with_logits),
        ("regression", 1, torch.tensor([0.5, -1.0, 2.0, 0.0]), lambda logits, y: F.mse_loss(logits.squeeze(), y)),
        ("regression", 3, torch.randn(4, 3, generator=torch.Generator().manual_seed(2)), F.mse_loss),
    ],
    ids=["single-label", "multi-label", "regression-1", "regression-3"],
)
def test_loss_follows_problem_type(problem_type, num_labels, labels, reference):
    model = tiny(num_labels=num_labels, problem_type=problem_type).train()
    out = model(pixel_values=X, labels=labels)
    assert torch.allclose(out.loss, reference(out.logits, labels))
    out.loss.backward()
    assert model.model.fc.weight.grad is not None
    expected = problem_type or "single_label_classification"  # inferred from integer labels, as transformers does
    assert model.config.problem_type == expected


def test_multi_label_float_labels_infer_the_problem_type():
    model = tiny()
    labels = torch.tensor([[1.0, 0, 0, 1]] * 4)
    out = model(pixel_values=X, labels=labels)
    assert model.config.problem_type == "multi_label_classification"
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels))


# ----------------------------------------------------------------------------------------------
# hidden states and the base model


@pytest.mark.parametrize("arch", list_models())
def test_hidden_states_stem_and_each_stage(arch):
    torch.manual_seed(0)
    config = UniQConfig(arch=arch, num_labels=3, image_size=32)
    model = UniQForImageClassification(config).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(pixel_values=x, output_hidden_states=True)
    hidden = out.hidden_states
    stages = model.model.feature_layers
    assert stages[0] == "stem" and len(hidden) == len(stages) >= 4
    assert all(h.dim() == 4 and h.shape[0] == 2 for h in hidden)
    assert [h.shape[-1] for h in hidden] == sorted((h.shape[-1] for h in hidden), reverse=True)  # downsampling
    assert [h.shape[1] for h in hidden[1:]] == sorted(h.shape[1] for h in hidden[1:])  # widening
    # The gradient reaches the hidden states (transformers' retain_grad check).
    hidden[0].retain_grad()
    hidden[-1].retain_grad()
    out.logits.sum().backward()
    assert hidden[0].grad is not None and hidden[-1].grad is not None
    # Off by default, on through the config; the tuple output carries them after the logits.
    assert model(pixel_values=x).hidden_states is None
    model.eval()
    model.config.output_hidden_states = True
    with torch.no_grad():
        as_tuple = model(pixel_values=x, return_dict=False)
        assert torch.equal(as_tuple[1][0], model.model.stem(x))
    assert len(as_tuple) == 2 and len(as_tuple[1]) == len(stages)


def test_base_model_loads_a_classifier_folder(tmp_path):
    classifier = tiny()
    classifier.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is UniQModel and not base.training
    reloaded = UniQForImageClassification.from_pretrained(tmp_path)
    assert_same(dict(base.state_dict()), backbone(dict(reloaded.state_dict())))  # every backbone tensor, nothing else
    with torch.no_grad():
        out = base(pixel_values=X, output_hidden_states=True)
        full = reloaded(pixel_values=X, output_hidden_states=True)
        assert isinstance(out, BaseModelOutputWithPoolingAndNoAttention)
        assert out.pooler_output.shape == (4, base.model.num_features)
        assert torch.equal(out.pooler_output, out.last_hidden_state.mean((2, 3)))
        # The pooled features are what the classifier reads: its head on them gives the logits.
        assert torch.equal(reloaded.model.fc(out.pooler_output), full.logits)
        assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, full.hidden_states))
        as_tuple = base(pixel_values=X, return_dict=False)
    assert len(as_tuple) == 2 and torch.equal(as_tuple[1], out.pooler_output)
    # A base-model checkpoint has no classifier: loading one into a classifier needs the explicit opt-in.
    base.save_pretrained(tmp_path / "base")
    with pytest.raises(CheckpointError, match="ignore_mismatched_sizes=True"):
        UniQForImageClassification.from_pretrained(tmp_path / "base")
    headed = UniQForImageClassification.from_pretrained(tmp_path / "base", ignore_mismatched_sizes=True)
    assert_same(backbone(dict(headed.state_dict())), dict(UniQModel.from_pretrained(tmp_path / "base").state_dict()))


# ----------------------------------------------------------------------------------------------
# new labels


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "latent"])
def test_new_labels_reinitialise_only_the_classifier(tmp_path, packed):
    source = tiny()
    source.save_pretrained(tmp_path / "src", packed=packed)
    reference = dict(UniQForImageClassification.from_pretrained(tmp_path / "src").state_dict())
    misfit = r"model\.fc\.bias \(4,\) \(config: \(5,\)\).*ignore_mismatched_sizes=True"
    with pytest.raises(CheckpointError, match=misfit):
        UniQForImageClassification.from_pretrained(tmp_path / "src", num_labels=5)

    torch.manual_seed(3)
    model = UniQForImageClassification.from_pretrained(tmp_path / "src", num_labels=5, ignore_mismatched_sizes=True)
    assert model.config.num_labels == 5 and model.config.id2label == {i: f"LABEL_{i}" for i in range(5)}
    assert_same(backbone(dict(model.state_dict())), backbone(reference))  # bit-identical backbone
    fc = model.model.fc
    assert fc.weight.shape == (5, 64) and torch.isfinite(fc.weight).all() and fc.weight.std() > 0
    assert fc.weight_quantizer.bits == fc.input_quantizer.bits == 8  # the config's last_bits
    assert bool(fc.weight_quantizer.initialized)  # weight steps from the new weights ...
    assert torch.equal(fc.weight_quantizer.step, fc.weight_quantizer.estimate_step(fc.weight))
    assert not bool(fc.input_quantizer.initialized)  # ... the input step is left to calibration
    calibrate(model.model, [X], 1, uninitialized_only=True)
    assert bool(fc.input_quantizer.initialized) and fc.input_quantizer.step.item() != 1.0
    assert_same(backbone(dict(model.state_dict())), backbone(reference))  # calibration touched the new head only

    # New label names, given as id2label: the labels and label2id follow.
    names = {0: "cat", 1: "dog", 2: "fox"}
    named = UniQForImageClassification.from_pretrained(tmp_path / "src", id2label=names, ignore_mismatched_sizes=True)
    assert named.config.id2label == names and named.config.label2id == {"cat": 0, "dog": 1, "fox": 2}
    assert named.model.fc.weight.shape == (3, 64)

    # The fine-tuned model reloads bit-identically.
    model.save_pretrained(tmp_path / "new", packed=packed)
    again = UniQForImageClassification.from_pretrained(tmp_path / "new")
    model.eval()
    with torch.no_grad():
        assert torch.equal(again(pixel_values=X).logits, model(pixel_values=X).logits)
    if not packed:
        assert_same(dict(again.state_dict()), dict(model.state_dict()))


def test_train_init_from_a_model_with_other_classes_keeps_the_new_classifier(tmp_path):
    from uniq_hub.training.model_init import load_init_weights

    source = tiny(num_labels=10)
    source.save_pretrained(tmp_path / "src", packed=False)
    torch.manual_seed(5)
    model = UniQForImageClassification(UniQConfig(arch="resnet20", num_labels=5, image_size=16))
    new_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(HEAD)}
    loaded = load_init_weights(model, str(tmp_path / "src"))
    state, src = dict(model.state_dict()), dict(source.state_dict())
    assert set(loaded) == {k for k in state if "_quantizer." not in k and not k.startswith(HEAD)}
    assert all(torch.equal(state[k], src[k]) for k in loaded)  # the backbone exactly
    assert_same({k: v for k, v in state.items() if k.startswith(HEAD)}, new_head)  # the new classifier untouched
    same_classes = UniQForImageClassification(UniQConfig(arch="resnet20", num_labels=10, image_size=16))
    assert "model.fc.weight" in load_init_weights(same_classes, str(tmp_path / "src"))
    with pytest.raises(ValueError, match="does not fit resnet32"):  # another network stays an error
        load_init_weights(UniQForImageClassification(UniQConfig(arch="resnet32", num_labels=5)), str(tmp_path / "src"))


def test_missing_backbone_tensor_stays_an_error_with_ignore_mismatched_sizes(tmp_path):
    tiny().save_pretrained(tmp_path, packed=False)
    state = load_file(tmp_path / "model.safetensors")
    del state[CHECKSUM_KEY], state["model.layer2.0.bn1.running_var"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    for kwargs in ({}, {"ignore_mismatched_sizes": True}, {"num_labels": 5, "ignore_mismatched_sizes": True}):
        with pytest.raises(CheckpointError, match=r"missing.*model\.layer2\.0\.bn1\.running_var"):
            UniQForImageClassification.from_pretrained(tmp_path, **kwargs)


def test_config_labels_and_scalar_stats():
    with pytest.raises(ValueError, match="id2label has 2 labels but num_labels=3"):
        UniQConfig(num_labels=3, id2label={0: "a", 1: "b"})
    config = UniQConfig(image_mean=0.5, image_std=0.25)  # a scalar for every channel, as image processors take
    assert config.image_mean == [0.5] * 3 and config.image_std == [0.25] * 3
    assert UniQConfig(num_channels=1, image_std=2).image_std == [2.0]


# ----------------------------------------------------------------------------------------------
# initialisation


@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv2"])
def test_meta_device_build_then_init_weights_is_complete(arch):
    config = UniQConfig(arch=arch, num_labels=3, w_bits=3, a_bits=3)
    reference = UniQForImageClassification(copy.deepcopy(config))
    with torch.device("meta"):
        model = UniQForImageClassification(copy.deepcopy(config))
    model.to_empty(device="cpu")
    for tensor in model.state_dict().values():  # garbage where init_weights would forget something
        tensor.fill_(float("nan") if tensor.is_floating_point() else 7)
    model.init_weights()
    buffers = dict(model.named_buffers())
    assert_same(buffers, dict(reference.named_buffers()))  # BatchNorm statistics, quantizer flags
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
    for name, q in quantizers(model.model).items():
        if name.endswith("weight_quantizer"):  # from the weights, as quantize_ sets them
            layer = model.model.get_submodule(name.rpartition(".")[0])
            assert bool(q.initialized) and torch.equal(q.step, q.estimate_step(layer.weight)), name
        else:
            assert not bool(q.initialized) and torch.all(q.step == 1.0), name


def test_fresh_model_weight_steps_fit_its_weights():
    model = UniQForImageClassification(UniQConfig(arch="resnet20", num_labels=3))
    layer = model.model.layer1[0].conv1
    assert torch.equal(layer.weight_quantizer.step, layer.weight_quantizer.estimate_step(layer.weight))


# ----------------------------------------------------------------------------------------------
# tracing


def test_jit_trace_is_refused_and_torch_export_works():
    model = tiny()
    with pytest.raises(RuntimeError, match=r"torch\.jit\.trace is not supported.*torch\.export\.export"):
        torch.jit.trace(model, (X,), strict=False)
    exported = torch.export.export(model, (X,))
    with torch.no_grad():
        assert torch.equal(exported.module()(X).logits, model(pixel_values=X).logits)


# ----------------------------------------------------------------------------------------------
# the transformers Trainer

FMNIST = Path(FASHION_MNIST_DIR)


def fashion_mnist(n: int, classes: int) -> tuple[list, list[int]]:
    """The first ``n`` Fashion-MNIST test images of classes ``0 .. classes - 1`` (PIL, 28x28 "L")."""
    from PIL import Image

    images, labels = read_idx(FMNIST / "t10k-images-idx3-ubyte.gz"), read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")
    keep = np.flatnonzero(labels < classes)[:n]
    return [Image.fromarray(images[i], "L") for i in keep], [int(labels[i]) for i in keep]


@pytest.mark.skipif(not (FMNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_trainer_fine_tunes_a_fashion_mnist_model_on_a_five_class_subset(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Image
    from transformers import AutoImageProcessor, Trainer, TrainingArguments

    from uniq_hub.training.data.fashion_mnist import FASHION_MNIST_CLASSES

    # A 10-class Fashion-MNIST model, as a zoo folder holds it (packed release).
    images, labels = fashion_mnist(48, 10)
    torch.manual_seed(0)
    source = UniQForImageClassification(UniQConfig(
        arch="resnet20", num_channels=1, image_size=28, image_mean=[0.286], image_std=[0.353],
        id2label=dict(enumerate(FASHION_MNIST_CLASSES)),
    ))
    processor = UniQImageProcessor.from_model_config(source.config)
    calibrate(source.model, [processor(images, return_tensors="pt")["pixel_values"]], 1)
    source.save_pretrained(tmp_path / "zoo")
    checkpoint = dict(UniQForImageClassification.from_pretrained(tmp_path / "zoo").state_dict())

    # Fine-tune on the first five classes: a new classifier, everything else loads exactly.
    subset = list(FASHION_MNIST_CLASSES[:5])
    model = AutoModelForImageClassification.from_pretrained(
        tmp_path / "zoo", id2label=dict(enumerate(subset)), ignore_mismatched_sizes=True)
    assert_same(backbone(dict(model.state_dict())), backbone(checkpoint))
    processor = AutoImageProcessor.from_pretrained(tmp_path / "zoo")
    images, labels = fashion_mnist(64, 5)
    features = Features({"image": Image(), "label": ClassLabel(names=subset)})
    dataset = Dataset.from_dict({"image": images, "label": labels}, features=features)

    def transform(batch: dict) -> dict:
        return {"pixel_values": processor(batch["image"], return_tensors="pt")["pixel_values"],
                "labels": torch.tensor(batch["label"])}

    dataset.set_transform(transform)
    calibrate(model.model, [dataset[:32]["pixel_values"]], 1, uninitialized_only=True)  # the new classifier's input
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=16, learning_rate=1e-3,
        report_to="none", save_strategy="no", logging_steps=1, use_cpu=True, remove_unused_columns=False,
        dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    result = trainer.train()
    assert trainer.state.global_step == 4 and np.isfinite(result.training_loss)
    trained = dict(model.state_dict())
    assert not torch.equal(trained["model.layer1.0.conv1.weight"], checkpoint["model.layer1.0.conv1.weight"])

    trainer.save_model(str(tmp_path / "finetuned"))  # the packed release, config, code and processor
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "finetuned")
    assert reloaded.config.id2label == dict(enumerate(subset))
    model.eval()
    pixels = dataset[:16]["pixel_values"]
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)
    saved, used = AutoImageProcessor.from_pretrained(tmp_path / "finetuned").to_dict(), processor.to_dict()
    for fields in (saved, used):  # auto_map says where remote code finds the class (5.25 sets it on saving)
        fields.pop("auto_map", None)
    assert saved == used
