"""`uniq-hub publish` refuses what must not go out (stray files, symlinks, NaN weights, a config
that disagrees with the weights, tampered remote code, a bad processor config) and reports Hub
faults (401, 500, no answer) in one line, within its timeout. Real exports, the local test Hub."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from uniq_hub.cli import main
from uniq_hub.hub.publish import publish
from uniq_hub.hub.publish_plan import PublishError, plan_upload
from uniq_hub.model.packing import CHECKSUM_KEY, state_dict_checksum


def _publish_error(folder: Path, match: str, **kwargs) -> str:
    with pytest.raises(PublishError) as info:
        publish(folder, "me/model", dry_run=True, **kwargs)
    message = str(info.value)
    assert match in message, message
    return message


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_only_declared_files_go_up(export, capsys):
    (export / "secrets.env").write_text("HF_TOKEN=hf_secret")
    torch.save({}, export / "pytorch_model.bin")  # a pickle: never uploaded
    (export / "train_notes.py").write_text("print('mine')\n")  # code no auto_map needs
    (export / "onnx" / ".ssh").mkdir(parents=True)  # under onnx/ only onnx/model.onnx is a release file
    (export / "onnx" / "README.txt").write_text("not declared")
    (export / "onnx" / "secrets.env").write_text("HF_TOKEN=hf_secret")
    (export / "onnx" / ".ssh" / "id_rsa").write_text("secret key")
    (export / "onnx" / "evil.py").write_text("print('evil')\n")
    (export / "sub").mkdir()
    (export / "sub" / "model-00001-of-00001.safetensors").write_bytes(b"not a shard of this folder")
    (export / "eval_results.json").write_text(json.dumps(dict(
        model_id="me/model", dataset="fashion_mnist", split="test", top1=90.5, top5=99.6, num_examples=10000,
        command="uniq-hub evaluate")))
    os.symlink(export / "config.json", export / "config-link.json")  # inside the folder: allowed, yet not declared
    plan = plan_upload(export, "me/model")
    assert set(plan.skipped) == {"secrets.env", "pytorch_model.bin", "train_notes.py", "config-link.json",
                                 "onnx/README.txt", "onnx/secrets.env", "onnx/.ssh/id_rsa", "onnx/evil.py",
                                 "sub/model-00001-of-00001.safetensors"}
    assert {"eval_results.json", "model.safetensors", "modeling_uniq.py"} <= set(plan.files)
    assert not any(name.startswith(("onnx/", "sub/")) for name in plan.files)
    assert main(["publish", str(export), "--repo-id", "me/model", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "skipped: secrets.env (not part of a release" in out and "skipped: pytorch_model.bin" in out
    assert not any(line.startswith(("secrets.env", "pytorch_model.bin")) for line in out.splitlines())


def test_symlink_leaving_the_folder_is_refused(export, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "id_rsa").write_text("secret")
    os.symlink(outside / "id_rsa", export / "README.md")
    with pytest.raises(PublishError, match=r"README\.md: a symlink to .*elsewhere/id_rsa, outside the folder"):
        plan_upload(export, "me/model")
    os.remove(export / "README.md")
    os.symlink(outside, export / "onnx")  # a linked directory counts too
    with pytest.raises(PublishError, match=r"onnx: a symlink to .*elsewhere, outside the folder"):
        plan_upload(export, "me/model")
    os.remove(export / "onnx")
    os.symlink(export, export / "loop")  # inside, but a directory: refused rather than followed
    with pytest.raises(PublishError, match=r"loop: a symlink to the directory .*export; replace it by the directory"):
        plan_upload(export, "me/model")


def test_non_finite_weights_are_refused(export):
    weights = export / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("bn1.weight"))
    state[key][0] = float("nan")  # what a run with --lr nan leaves behind
    state.pop(CHECKSUM_KEY)
    state[CHECKSUM_KEY] = state_dict_checksum(state)
    save_file(state, str(weights), metadata=metadata)
    _publish_error(export, f"does not load with uniq_hub: {weights}: {key!r} holds NaN or infinite values")


@pytest.mark.parametrize("changes, match", [
    ({"w_bits": 4}, "metadata 'uniq_hub.w_bits' is 2 but config.json gives 4"),
    ({"a_bits": 3}, "metadata 'uniq_hub.a_bits' is 2 but config.json gives 3"),
    ({"w_bits": 0}, "UniQConfig.w_bits must be an int in 1..8 or 32 (full precision), got 0"),
])
def test_config_that_disagrees_with_the_weights_is_refused(export, changes, match):
    _edit_json(export / "config.json", **changes)
    _publish_error(export, match)


def test_processor_config_is_checked(export):
    _edit_json(export / "preprocessor_config.json", image_std=[0.0])
    _publish_error(export, "preprocessor_config.json: image_std must be positive and finite, got [0.0]")
    _edit_json(export / "preprocessor_config.json", image_std=[0.5], crop_size={"height": 32, "width": 32})
    plan = plan_upload(export, "me/model")
    assert plan.warnings == [
        f"{export / 'preprocessor_config.json'}: crop_size {{'height': 32, 'width': 32}} disagrees with config.json "
        "image_size 28: the model would see inputs of another size than it was trained on"
    ]


TAMPER = '''

_original_forward = UniQForImageClassification.forward


def _tampered_forward(self, *args, **kwargs):
    output = _original_forward(self, *args, **kwargs)
    output.logits = output.logits + 1e-3
    return output


UniQForImageClassification.forward = _tampered_forward
'''


RUN_MARKER = '''
import pathlib
pathlib.Path({marker!r}).write_text("the folder's code ran")
'''


@pytest.mark.parametrize("edit", ["tamper", "same-logits", "broken", "extra-module"])
def test_folder_code_that_differs_from_the_library_is_refused_and_never_run(export, tmp_path, edit):
    """The shipped code is the library's own: a folder code file that differs from it is refused,
    whether it changes the logits, leaves them alone (code riding along) or does not even parse,
    and a dry run executes none of it."""
    marker = tmp_path / "ran.txt"
    code = export / "modeling_uniq.py"
    original = code.read_text()
    if edit == "tamper":
        code.write_text(original + TAMPER + RUN_MARKER.format(marker=str(marker)))
    elif edit == "same-logits":
        code.write_text(original + RUN_MARKER.format(marker=str(marker)))
    elif edit == "broken":
        code.write_text(original.replace("def forward(", "def forward(:", 1))
    else:  # a module the library does not have, pulled in by a relative import
        (export / "evil.py").write_text(RUN_MARKER.format(marker=str(marker)))
        code.write_text(original + "\nfrom .evil import *  # noqa\n")
    _publish_error(export, f"{code}: differs from this uniq_hub's modeling_uniq.py; only the library's own code is "
                           "uploaded, and folder code is never run")
    with pytest.raises(SystemExit, match="differs from this uniq_hub's modeling_uniq.py"):
        main(["publish", str(export), "--repo-id", "me/model", "--dry-run"])
    assert not marker.exists()


@pytest.mark.parametrize("fault, match", [
    (401, "answered 401 (Invalid credentials in Authorization header): the token is missing, invalid or expired: "
          "log in with `hf auth login`, set HF_TOKEN, or pass --token"),
    (500, "answered 500 (Internal Error - We're working hard to fix this as soon as possible!): the Hub failed on "
          "its side: try again later"),
    ("hang", "no answer within 1 s; check the network and HF_ENDPOINT (or pass a longer --timeout)"),
])
def test_hub_faults_are_one_line(export, hub_server, hub_token, fault, match):
    before = hub_server.request_count
    with hub_server.failing(fault):
        start = time.monotonic()
        with pytest.raises(SystemExit) as info:
            main(["publish", str(export), "--repo-id", f"{hub_server.user}/faults", "--token", hub_token,
                  "--timeout", "1"])
        elapsed = time.monotonic() - start
    message = str(info.value.code)
    assert message.startswith("uniq-hub publish: POST " if fault != "hang" else "uniq-hub publish: ")
    assert f"{hub_server.url}/api/repos/create" in message and match in message, message
    assert "\n" not in message and "Traceback" not in message
    requests = list(hub_server.request_log)[before - hub_server.request_count:]
    assert requests[0].startswith("POST /api/repos/create") and len(requests) <= 2, requests  # (401: a repo_info check)
    assert not any("/commit/" in r or "/preupload/" in r or "/lfs/" in r for r in requests)  # nothing uploaded
    if fault == "hang":
        assert elapsed < 60, elapsed  # verification (cached) plus the 1 s timeout, not a hang
