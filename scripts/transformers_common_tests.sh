#!/usr/bin/env bash
# Run transformers' own common model tests (tests/test_modeling_common.py of the installed version's
# source distribution) against UniQModel / UniQForImageClassification, outside this repository:
# a ResNet-style tiny tester (resnet20 w2a2) is written next to the downloaded tests. The expected
# failures and their reasons are listed in README.md ("Fine-tuning and the Trainer"). About 5 min on
# 2 cores. Usage: scripts/transformers_common_tests.sh [WORKDIR] [pytest args...]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="$repo/.venv/bin/python"
work="${1:-${TMPDIR:-/tmp}/uniq_transformers_common}"; shift || true
version="$("$py" -c 'import transformers; print(transformers.__version__)')"
mkdir -p "$work" && cd "$work"
[ -d "transformers-$version" ] || {
  "$py" -m pip download --no-deps --no-binary :all: "transformers==$version" -d . >/dev/null
  tar xzf "transformers-$version.tar.gz"
}
[ -d extra/parameterized ] || "$py" -m pip install -q --target extra parameterized
tests="transformers-$version/tests"
mkdir -p "$tests/models/uniq" "$tests/utils" "$tests/exporters" "$tests/generation"
touch "$tests/__init__.py" "$tests/models/__init__.py" "$tests/models/uniq/__init__.py" \
      "$tests/utils/__init__.py" "$tests/exporters/__init__.py" "$tests/generation/__init__.py"
# Three modules test_modeling_common.py imports are absent from the sdist: minimal stand-ins.
cat > "$tests/utils/test_configuration_utils.py" <<'EOF'
config_common_kwargs = {  # as in transformers' tests/utils/test_configuration_utils.py (5.x)
    "return_dict": False, "output_hidden_states": True, "output_attentions": True, "dtype": "float16",
    "chunk_size_feed_forward": 5, "architectures": ["BertModel"], "id2label": {0: "label"},
    "label2id": {"label": "0"}, "problem_type": "regression",
}
EOF
echo 'class ExportTesterMixin:  # exporter tests: torch.export is checked by tests/test_parity.py
    pass' > "$tests/exporters/test_export.py"
echo 'class GenerationTesterMixin:  # image classifiers do not generate
    pass' > "$tests/generation/test_utils.py"
cat > "$tests/models/uniq/test_modeling_uniq.py" <<'EOF'
"""Tiny tester (as tests/models/resnet/) driving the common model tests against uniq_hub."""
import unittest

import torch
from transformers.testing_utils import require_torch, torch_device

from uniq_hub import UniQConfig, UniQForImageClassification, UniQModel

from ...test_configuration_common import ConfigTester
from ...test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor


class UniQModelTester:
    def __init__(self, parent, batch_size=3, image_size=32, num_channels=3, num_labels=3, is_training=True):
        self.parent, self.batch_size, self.image_size = parent, batch_size, image_size
        self.num_channels, self.num_labels, self.is_training = num_channels, num_labels, is_training
        self.num_stages, self.hidden_sizes = 3, [16, 32, 64]  # resnet20

    def get_config(self):
        return UniQConfig(arch="resnet20", w_bits=2, a_bits=2, num_labels=self.num_labels,
                          image_size=self.image_size, num_channels=self.num_channels)

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), pixel_values, ids_tensor([self.batch_size], self.num_labels)

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


@require_torch
class UniQModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (UniQModel, UniQForImageClassification)
    test_resize_embeddings = False
    has_attentions = False
    test_torch_exportable = True

    def setUp(self):
        self.model_tester = UniQModelTester(self)
        self.config_tester = ConfigTester(self, config_class=UniQConfig, has_text_modality=False,
                                          common_properties=["num_labels"])

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="UniQ does not use inputs_embeds")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="UniQ does not support input and output embeddings")
    def test_model_get_set_embeddings(self):
        pass

    def test_model(self):
        config, pixel_values, labels = self.model_tester.prepare_config_and_inputs()
        t = self.model_tester
        out = UniQModel(config).to(torch_device).eval()(pixel_values)
        self.assertEqual(out.last_hidden_state.shape, (t.batch_size, t.hidden_sizes[-1], t.image_size // 4, t.image_size // 4))
        self.assertEqual(out.pooler_output.shape, (t.batch_size, t.hidden_sizes[-1]))
        logits = UniQForImageClassification(config).to(torch_device).eval()(pixel_values, labels=labels).logits
        self.assertEqual(logits.shape, (t.batch_size, t.num_labels))

    def test_hidden_states_output(self):  # as ResNet's: stem output + one per stage
        def check(inputs_dict, config, model_class):
            model = model_class(config).to(torch_device).eval()
            with torch.no_grad():
                hidden_states = model(**self._prepare_for_class(inputs_dict, model_class)).hidden_states
            self.assertEqual(len(hidden_states), self.model_tester.num_stages + 1)
            self.assertListEqual(list(hidden_states[0].shape[-2:]), [self.model_tester.image_size] * 2)

        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            inputs_dict["output_hidden_states"] = True
            check(inputs_dict, config, model_class)
            del inputs_dict["output_hidden_states"]
            config.output_hidden_states = True
            check(inputs_dict, config, model_class)
EOF
cd "transformers-$version"
PYTHONPATH="$work/extra:$repo${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
  "$py" -m pytest -p no:xdist -p no:cacheprovider -q tests/models/uniq/test_modeling_uniq.py -rf "$@"
