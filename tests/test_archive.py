"""Model archives: a reshaped model reloads (in a fresh process) with identical outputs."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from energysplit.graph.archive import load_model, read_archive, save_model
from energysplit.errors import EnergySplitError, InputFileError
from energysplit.graph.trace import build_inventory
from energysplit.graph.plan import Plan, Remove, Split
from energysplit.graph.surgery import apply_plan_
from energysplit.zoo import create_model


def randomise_bn_(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def reshaped_mobilenet_v2():
    torch.manual_seed(0)
    model = randomise_bn_(create_model("mobilenet_v2", width=0.25))
    inv = build_inventory(model, (1, 28, 28))
    grow = inv.splittable()[1]
    residual = next(g for g in inv if len(g.producers) > 1)
    first = Plan([Split(grow.id, c) for c in range(grow.width)]
                 + [Remove(residual.id, (0, 3)), Remove(inv.splittable()[3].id, (1,))])
    inv = apply_plan_(model, inv, first)
    inv = apply_plan_(model, inv, Plan([Split(grow.id, c) for c in range(inv[grow.id].width)]))
    with torch.no_grad():  # make the duplicated channels differ, as after fine-tuning
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model, inv, grow.id


ARCH = {"name": "mobilenet_v2", "kwargs": {"width": 0.25}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, inv, grown = reshaped_mobilenet_v2()
    path = save_model(model, tmp_path_factory.mktemp("archive") / "m.pt", ARCH, (1, 28, 28),
                      meta={"note": "test", "step": 2})
    return model, inv, grown, path


def test_reshaped_model_reloads_in_fresh_process(tmp_path, saved):
    model, inv, grown, path = saved
    base = build_inventory(create_model("mobilenet_v2", width=0.25), (1, 28, 28))
    assert inv[grown].width == 4 * base[grown].width
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        "from energysplit.graph.archive import load_model\n"
        "model, record = load_model(sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    torch.save(model(torch.load(sys.argv[2])), sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True, timeout=120)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=1e-6, atol=1e-6)
    record = torch.load(path, weights_only=True)  # plain data only
    assert record["widths"] == inv.widths() and record["meta"] == {"note": "test", "step": 2}


@pytest.mark.parametrize("arch, shape", [
    ({"name": "torchvision:resnet18", "kwargs": {"num_classes": 10}}, (3, 32, 32)),
    ({"name": "energysplit.zoo.mobilenet:MobileNetV1", "kwargs": {"width": 0.25}}, (1, 28, 28)),
])
def test_torchvision_and_importable_factories(tmp_path, arch, shape):
    from energysplit.graph.archive import build_model

    torch.manual_seed(1)
    model = randomise_bn_(build_model(arch))
    inv = build_inventory(model, shape)
    ops = [Remove(inv.prunable()[0].id, (0,)), Split(inv.splittable()[-1].id, 0), Split(inv.splittable()[-1].id, 2)]
    apply_plan_(model, inv, Plan(ops))
    path = save_model(model, tmp_path / "m.pt", arch, shape)
    loaded, record = load_model(path)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert record["arch"] == arch
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_bad_files_raise_one_line_errors(tmp_path, saved):
    model, _, _, path = saved
    arch = ARCH
    with pytest.raises(EnergySplitError):  # the arch does not match: fails at save time
        save_model(model, tmp_path / "bad.pt", "mobilenet_v1", (1, 28, 28))
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"hello")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    for name in ("cut.pt", "junk.pt", "sd.pt"):
        with pytest.raises(EnergySplitError, match="not an energysplit model archive") as info:
            load_model(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(InputFileError, match="no such model archive"):
        read_archive(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="plain data"):
        save_model(model, tmp_path / "x.pt", arch, (1, 28, 28), meta={"bad": object()})
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "bad.pt").exists()


def test_inspect_reads_an_archive(saved, capsys):
    from energysplit.cli import main

    model, inv, grown, path = saved
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{grown}" in out and f" {inv[grown].width} " in next(line for line in out.splitlines() if line.startswith(grown))
