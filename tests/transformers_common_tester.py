"""transformers' common model tests (tests/test_modeling_common.py) against UniQModel and
UniQForImageClassification: a tiny tester, as transformers' tests/models/resnet/ has.

Not collected by this repository's pytest run (the name does not match ``test_*.py``): it needs the
test sources of transformers' sdist, next to which ``scripts/transformers_common_tests.sh`` copies it
as ``tests/models/uniq/test_modeling_uniq.py``. The expected failures are listed in README.md
("Fine-tuning and the Trainer").
"""
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
        side = t.image_size // 4
        self.assertEqual(out.last_hidden_state.shape, (t.batch_size, t.hidden_sizes[-1], side, side))
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
