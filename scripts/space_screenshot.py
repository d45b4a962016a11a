"""Screenshot of the demo Space for the README (docs/space-demo.png), offline: the Fashion-MNIST
ResNet-20 release folders of zoo/ are pushed as uniq/<name> to the loopback Hub of the tests
(tests/hub_server.py), the app (spaces/uniq-zoo-demo/app.py) serves the Space card's models from it on
127.0.0.1, and Debian's Chromium renders the page headless.

    .venv/bin/python scripts/space_screenshot.py [--out docs/space-demo.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "space-demo.png"))
    parser.add_argument("--size", default="1400,1100", help="browser window WIDTH,HEIGHT")
    args = parser.parse_args()
    from hub_server import HubServer

    with HubServer() as hub, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=os.path.join(tmp, "hf"), HF_HUB_DISABLE_XET="1",
                          GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1")
        from huggingface_hub import HfApi
        from huggingface_hub.repocard import metadata_load

        from uniq_hub import UniQForImageClassification
        from uniq_hub.deploy.onnx_export import export_onnx
        from uniq_hub.deploy.onnx_graph import GraphError, check_graph

        space = REPO / "spaces" / "uniq-zoo-demo"
        models = metadata_load(space / "README.md")["models"]
        api = HfApi(token=hub.token)
        for repo_id in models:
            folder = Path(shutil.copytree(REPO / "zoo" / repo_id.split("/")[1], Path(tmp) / repo_id.split("/")[1]))
            if (folder / "onnx" / "model.onnx").is_file():
                try:
                    check_graph(folder)
                except GraphError:  # exported before this version's checks: the same weights, exported again
                    model = UniQForImageClassification.from_pretrained(folder).eval()
                    export_onnx(model, folder / "onnx" / "model.onnx")
            api.create_repo(repo_id, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder)
        sys.path.insert(0, str(space))
        import app

        demo = app.build_demo(models)
        demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
        try:
            browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                            "--hide-scrollbars", f"--user-data-dir={Path(tmp) / 'profile'}",
                            f"--window-size={args.size}", "--virtual-time-budget=30000",
                            f"--screenshot={os.path.abspath(args.out)}", demo.local_url],
                           check=True, capture_output=True, timeout=300)
        finally:
            demo.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
