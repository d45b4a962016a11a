"""uniq_hub.deploy.onnx_export: the exact integer ONNX graph against PyTorch and the reference evaluator."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from sklearn.datasets import load_sample_images

from tiny_models import RANDOM_BATCHNORM, tiny_model
from train_helpers import eager_kernels  # noqa: F401  (autouse: no torch.compile for a few batches)
from uniq_hub import UniQConfig, UniQForImageClassification
from uniq_hub.deploy.onnx_backends import (
    available_backends,
    compare_logits,
    load_backend,
    openvino_model,
    within_bounds,
)
from uniq_hub.deploy.onnx_diagnostic import flip_diagnostic
from uniq_hub.deploy.onnx_export import OnnxExportError, export_onnx, torch_logits
from uniq_hub.deploy.onnx_graph import META_EXACT_BACKENDS
from uniq_hub.model.bitpack import unpack_bits
from uniq_hub.model.packing import PACKED_SUFFIX, pack_state_dict, quantized_layers

SIZE = 32
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def real_images(n: int, size: int = SIZE) -> np.ndarray:
    """``n`` normalised crops of scikit-learn's two sample photos, ``(n, 3, size, size)``."""
    from PIL import Image

    photos = load_sample_images().images
    out = []
    for i in range(n):
        photo = photos[i % 2]
        side = 96 + 40 * (i // 2)
        top, left = (37 * i) % (photo.shape[0] - side), (53 * i) % (photo.shape[1] - side)
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BILINEAR)
        out.append(((np.asarray(crop, np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def make_model(arch: str, w_bits: int, a_bits: int, seed: int = 0, **config) -> UniQForImageClassification:
    """A quantized model with random BatchNorm statistics, calibrated on real images."""
    return tiny_model(arch, w_bits=w_bits, a_bits=a_bits, seed=seed, num_labels=10, image_size=SIZE,
                      calibration=torch.from_numpy(real_images(4)), batchnorm=RANDOM_BATCHNORM, batchnorm_first=True,
                      **config)


CASES = [
    (arch, b, b, {}) for arch in ("resnet18", "resnet34", "resnet20", "resnet32", "mobilenetv2") for b in (1, 2, 3, 4)
]
CASES += [
    ("resnet20", 2, 4, {}),
    ("resnet18", 2, 4, {"overrides": {"layer4.*": [4, 4], "layer1.0.conv1": [3, 8], "fc": [4, 4]}}),
    ("mobilenetv2", 4, 2, {"signed_inputs": True, "overrides": {"blocks.1.*": [2, 4]}}),
]


@pytest.mark.parametrize("arch,w_bits,a_bits,extra", CASES, ids=lambda v: str(v) if not isinstance(v, dict) else "")
def test_export_is_exact(tmp_path, arch, w_bits, a_bits, extra):
    model = make_model(arch, w_bits, a_bits, **extra)
    path = export_onnx(model, tmp_path / "model.onnx", verify=False)
    graph = onnx.load(path)
    onnx.checker.check_model(graph, full_check=True)
    assert graph.opset_import[0].version >= 19
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    # Every quantized layer at <= 4 bits: int8 initializer holding exactly the packed codes' levels,
    # Q/DQ on its input; no float Round anywhere but in 8-bit (or signed) input quantizers.
    inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    packed = pack_state_dict(model.model)
    ops = {n.name: n.op_type for n in graph.graph.node}
    for name, (layer, wq) in quantized_layers(model.model).items():
        codes = unpack_bits(packed[name + PACKED_SUFFIX], wq.bits, layer.weight.numel()).numpy().astype(np.int64)
        if wq.bits <= 4:
            ints = inits[f"{name}.weight_int8"]
            assert ints.dtype == np.int8
            ints = ints.T if ints.shape != tuple(layer.weight.shape) else ints
            np.testing.assert_array_equal(ints.reshape(-1), 2 * codes - (2**wq.bits - 1))
        aq = layer.input_quantizer
        if aq is not None and aq.bits <= 4 and aq.scheme == "unsigned":
            assert ops.get(f"{name}.in_q") == "QuantizeLinear" and ops.get(f"{name}.in_dq") == "DequantizeLinear"
            assert ops.get(f"{name}.in_clip") == "Clip"
        if aq is not None and aq.bits <= 4:
            assert f"{name}.in_round" not in ops or aq.scheme == "symmetric"

    x = np.concatenate([real_images(3), np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)])
    reference = load_backend(path, "reference")(x)
    stats = compare_logits(torch_logits(model, x), reference)
    assert within_bounds(stats), stats
    for backend in available_backends():
        if backend != "reference":
            stats = compare_logits(reference, load_backend(path, backend)(x))
            assert within_bounds(stats), (backend, stats)


def test_export_records_verified_backends(tmp_path):
    model = make_model("mobilenetv2", 2, 2)
    graph = onnx.load(export_onnx(model, tmp_path / "model.onnx"))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta[META_EXACT_BACKENDS]) == ["reference"] + [
        b for b in available_backends() if b != "reference"
    ]
    assert meta["uniq_hub.format"] == "exact-qdq-1"


def test_same_arithmetic_is_identical(tmp_path):
    """Given the same input, the Clip / QuantizeLinear / DequantizeLinear chain gives bit-identical
    results to PyTorch's quantizer; BatchNorm differs by PyTorch's fused multiply-add at most."""
    from onnx.reference import ReferenceEvaluator

    model = make_model("resnet20", 2, 2)
    path = export_onnx(model, tmp_path / "model.onnx", verify=False)
    graph = onnx.load(path)
    names = ["stem.conv.conv", "layer1.0.bn1.bn_add", "layer1.0.conv1.in_dq"]
    graph.graph.output.extend([onnx.helper.make_empty_tensor_value_info(n) for n in names])
    stem, bn, dq = ReferenceEvaluator(graph).run(names, {"pixel_values": real_images(2)})
    block = model.model.layer1[0]
    with torch.no_grad():
        torch_bn = block.bn1(torch.from_numpy(stem))
    # PyTorch fuses BatchNorm's multiply-add (one rounding), ONNX rounds after Mul and after Add: a few ulps.
    np.testing.assert_allclose(bn, torch_bn.numpy(), rtol=0, atol=8 * float(np.spacing(np.abs(bn).max())))
    with torch.no_grad():
        torch_q = block.conv1.input_quantizer(torch.relu(torch.from_numpy(bn)))
    np.testing.assert_array_equal(dq, torch_q.numpy())
    assert len(np.unique(dq)) > 2  # several levels in use


def test_batch_is_dynamic(tmp_path):
    model = make_model("resnet20", 2, 2)
    path = export_onnx(model, tmp_path / "model.onnx", verify=False)
    run = load_backend(path, "onnxruntime")
    for n in (1, 3):
        assert run(real_images(n)).shape == (n, 10)


def test_flip_diagnostic_finds_boundary_flips(tmp_path):
    """A one-ulp different step puts one element on the other side of a rounding boundary: the
    diagnostic finds exactly that flip and places it on the boundary; a 1% different step is not
    a boundary flip."""
    model = make_model("resnet20", 2, 2)
    x = real_images(1)
    seen = {}
    layer = model.model.layer1[0].conv1
    hook = layer.input_quantizer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()))
    with torch.no_grad():
        model.model(torch.from_numpy(x))
    hook.remove()
    step = 2 * seen["x"].max()  # the largest element sits exactly at x / D = 0.5: code 0 (half to even)
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        layer.input_quantizer.step.fill_(float(np.nextafter(np.float32(step), np.float32(0))))
        export_onnx(model, path, verify=False)
        layer.input_quantizer.step.fill_(float(step))
    result = flip_diagnostic(model, path, x)
    assert result["first_layer"] == "layer1.0.conv1"
    assert result["flips"] == 1 and result["all_at_boundary"], result
    assert result["max_boundary_distance"] < 1e-6

    with torch.no_grad():
        layer.input_quantizer.step.fill_(float(step) * 0.2)
        export_onnx(model, path, verify=False)
        layer.input_quantizer.step.fill_(float(step) * 0.2 * 1.01)
    result = flip_diagnostic(model, path, x)
    assert result["first_layer"] == "layer1.0.conv1" and result["flips"] > 1
    assert not result["all_at_boundary"]

    with torch.no_grad():
        export_onnx(model, path, verify=False)
    assert flip_diagnostic(model, path, x)["flips"] == 0


@pytest.mark.skipif("openvino" not in available_backends(), reason="needs openvino (dev extra)")
def test_fast_backend_runs_quantized_convolutions_in_int8(tmp_path):
    """OpenVINO's compiled model: every convolution whose input and weight are quantized at <= 4 bits
    runs in u8 / i8 (FakeQuantize fused into an integer convolution), the float ones in f32."""
    model = make_model("resnet20", 2, 2)
    path = export_onnx(model, tmp_path / "model.onnx", verify=False)
    runtime = openvino_model(str(path)).get_runtime_model()
    precisions = []  # OpenVINO renames fused convolutions: count them by runtime precision
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            precisions.append(info["runtimePrecision"].astype(str))
    quantized = [
        name
        for name, (layer, wq) in quantized_layers(model.model).items()
        if isinstance(layer, torch.nn.Conv2d) and wq.bits <= 4 and layer.input_quantizer.bits <= 4
    ]
    assert len(quantized) == 20  # resnet20: all convs but the 8-bit stem
    assert sorted(precisions) == ["f32"] + ["u8"] * 20, precisions


def test_uncalibrated_steps_are_refused(tmp_path):
    model = UniQForImageClassification(UniQConfig(arch="resnet20", num_labels=10, image_size=SIZE))
    with pytest.raises(OnnxExportError, match=r"stem\.conv\.input_quantizer: step size not calibrated"):
        export_onnx(model, tmp_path / "model.onnx")


def test_unknown_layer_is_refused(tmp_path):
    model = make_model("resnet20", 2, 2)
    model.model.layer1[0].bn1 = torch.nn.GroupNorm(4, 16)
    with pytest.raises(OnnxExportError, match=r"layer 'layer1\.0\.bn1' \(GroupNorm\) is not known"):
        export_onnx(model, tmp_path / "model.onnx")
    model = make_model("resnet20", 2, 2)
    model.model.forward_features = lambda x: torch.sigmoid(x)
    with pytest.raises(OnnxExportError, match="operation 'sigmoid'"):
        export_onnx(model, tmp_path / "model.onnx")


def test_a_model_loaded_as_remote_code_exports_the_same_verified_graph(tmp_path):
    """The exporter recognises a UniQ classifier by its config and the registry, not by its class: a
    model loaded through ``trust_remote_code`` (its classes from the folder's code, in
    transformers_modules) exports, verified against its own logits, the graph uniq_hub's model exports."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from uniq_hub.deploy.onnx_graph import META_SOURCE, graph_checksum

    model = make_model("resnet20", 2, 2)
    folder = tmp_path / "remote_export"
    model.save_pretrained(folder)
    # As trust_remote_code loads it where uniq_hub's auto classes are not registered (they win when they are).
    remote_class = get_class_from_dynamic_module("modeling_uniq.UniQForImageClassification", folder)
    remote = remote_class.from_pretrained(folder).eval()
    assert type(remote).__module__.startswith("transformers_modules."), type(remote).__module__
    assert not isinstance(remote, UniQForImageClassification)
    state = torch.random.get_rng_state()
    theirs = onnx.load(export_onnx(remote, tmp_path / "theirs.onnx"))  # verify=True: against the remote logits
    assert torch.equal(torch.random.get_rng_state(), state)  # the rebuild leaves the global RNG alone
    ours = onnx.load(export_onnx(model, tmp_path / "ours.onnx", verify=False))
    assert graph_checksum(theirs) == graph_checksum(ours)
    meta = [{p.key: p.value for p in g.metadata_props} for g in (theirs, ours)]
    assert meta[0][META_SOURCE] == meta[1][META_SOURCE]
    assert "reference" in json.loads(meta[0][META_EXACT_BACKENDS])
    x = real_images(3)
    graph_logits = load_backend(tmp_path / "theirs.onnx", "reference")(x)
    assert within_bounds(compare_logits(torch_logits(remote, x), graph_logits))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_int8_layers_cannot_saturate_int16_pair_sums(bits, tmp_path):
    """CPUs without VNNI add pairs of u8 x s8 products into int16 with saturation (``vpmaddubsw``): every
    int8 convolution of the exported graph keeps 2 * max|activation code| * max|weight level| <= 32767,
    so its integer path is exact there too (docs/deploy.md)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(export_onnx(make_model("resnet20", bits, bits), tmp_path / "model.onnx", verify=False)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    pairs = []
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        x_dq, w_dq = producer.get(conv.input[0]), producer.get(conv.input[1])
        if x_dq is None or w_dq is None or w_dq.op_type != "DequantizeLinear" or x_dq.op_type != "DequantizeLinear":
            continue  # a float convolution (8-bit or full-precision layers)
        weights, q = inits[w_dq.input[0]], producer[x_dq.input[0]]
        clip = producer[q.input[0]]  # the activation's Clip at (2^b - 1) * D before its QuantizeLinear (scale D)
        assert weights.dtype == np.int8 and inits[q.input[2]].dtype == np.uint8 and clip.op_type == "Clip"
        a_max = float(np.round(inits[clip.input[2]].max() / inits[q.input[1]].max()))
        pairs.append(2 * a_max * float(np.abs(weights.astype(np.int32)).max()))
    assert pairs and max(pairs) <= 32767, pairs
    assert max(pairs) <= 2 * (2 ** max(bits, 2) - 1) ** 2  # the levels of the layer's own bit-width
