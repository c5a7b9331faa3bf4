"""``energysplit compress`` end to end on torchvision networks a user brings (issue 18): a ShuffleNet
(channel shuffle, chunks), a DenseNet (BatchNorm on concatenations) and a vision transformer (MLP
neurons on tokens), each from a state dict, trained on a user's ImageFolder directory (a small subset).
Every run writes its archive and an ONNX file that ONNX Runtime agrees with, and lands under budget."""
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from energysplit.graph.archive import build_model, load_model

SIZE = 32  # ImageFolder images are resized to 32 x 32
MODELS = {  # --arch, --arch-kwargs: small instances of each family, so each run takes seconds
    "shufflenet": ("torchvision:shufflenet_v2_x0_5", {}),
    "densenet": ("torchvision.models:DenseNet", {"growth_rate": 8, "block_config": [2, 2], "num_init_features": 16,
                                                  "bn_size": 2}),
    "vit": ("torchvision.models:VisionTransformer", {"image_size": SIZE, "patch_size": 8, "num_layers": 2,
                                                     "num_heads": 2, "hidden_dim": 16, "mlp_dim": 128}),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder of 3 classes (scikit-learn's digits 0-2 as RGB PNGs), 60 images in all."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("folder")
    digits = load_digits()
    counts = {0: 0, 1: 0, 2: 0}
    for image, label in zip(digits.images, digits.target):
        if label in counts and counts[label] < 20:
            (root / f"digit{label}").mkdir(exist_ok=True)
            pixels = (image / 16 * 255).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").resize((SIZE, SIZE)).save(root / f"digit{label}" / f"{counts[label]}.png")
            counts[label] += 1
    return root


@pytest.mark.parametrize("family", list(MODELS))
def test_compress_a_torchvision_network_on_an_image_folder(family, folder, tmp_path):
    arch, kwargs = MODELS[family]
    model = build_model({"name": arch, "kwargs": {**kwargs, "num_classes": 3}})
    torch.save(model.state_dict(), tmp_path / "model.pt")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ENERGYSPLIT_CACHE": str(tmp_path / "cache"),
           "ENERGYSPLIT_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "energysplit", "compress", str(tmp_path / "model.pt"), "--arch", arch,
           "--arch-kwargs", json.dumps(kwargs), "--data", str(folder),
           "--target", "mobile", "--budget", "0.7", "--epochs", "1", "--batch-size", "16", "--no-progress",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["mobile [mJ]"] <= report["budget"]["budget"] < report["before"]["mobile [mJ]"]
    assert report["widths"]["before"] != report["widths"]["after"]

    compressed, record = load_model(out / "model.es")
    x = torch.randn(2, *record["input_shape"])
    with torch.no_grad():
        expected = compressed.eval()(x).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    # float32 rounding scales with the logits (here up to ~60): the export's own check is 1e-4 absolute
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
    assert type(compressed) is type(model)
