"""The compute device (energysplit._device): choice, errors, and models moved in and back out."""
import pytest
import torch

from energysplit._device import compute_device, on_compute_device, resolve_device, use_device
from energysplit.errors import EnergySplitError
from energysplit.cost.conformance import TinyNet

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cpu_and_auto_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("name,text", [("banana", "unknown device 'banana'"), ("mps", "not supported"),
                                       ("cuda:99", "cuda")])
def test_bad_devices_are_one_line_errors(name, text):
    if name == "cuda:99" and torch.cuda.is_available() and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    with pytest.raises(EnergySplitError, match=text) as info:
        resolve_device(name)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_names_the_fix():
    with pytest.raises(EnergySplitError, match="--device cpu"):
        resolve_device("cuda")


def test_use_device_restores_the_previous_choice_even_on_error():
    assert compute_device() == torch.device("cpu")
    with pytest.raises(RuntimeError):
        with use_device("cpu"):
            raise RuntimeError("boom")
    assert compute_device() == torch.device("cpu")


def test_a_model_already_on_the_compute_device_is_not_touched(monkeypatch):
    model = TinyNet()
    moved = []
    monkeypatch.setattr(model, "to", lambda *a, **k: moved.append(a))
    with on_compute_device(model) as inside:
        assert inside is model
    assert moved == []


def test_the_cli_rejects_a_missing_gpu_before_any_work(tmp_path, capsys):
    from energysplit.cli import main

    out = tmp_path / "out"
    code = main(["compress", "--demo", "--data", "digits", "--device", "banana", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown device 'banana'" in err
    assert not out.exists()
    assert compute_device() == torch.device("cpu")


@needs_cuda
def test_train_scores_and_importance_run_on_cuda_and_hand_the_model_back(digits):
    from energysplit.splitting.scores import splitting_scores
    from energysplit.graph.trace import build_inventory
    from energysplit.pruning.importance import taylor_importance
    from energysplit.training.loop import TrainConfig, evaluate, train
    from energysplit.zoo import create_model

    model = create_model("vgg_small", in_channels=1, num_classes=10, width=0.25)
    params = {name: p for name, p in model.named_parameters()}
    inv = build_inventory(model, digits.input_shape)
    batches = [(x, y) for x, y in torch.utils.data.DataLoader(digits.train, batch_size=64)][:4]
    with use_device("cuda"):
        train(model, digits.train, TrainConfig(epochs=4, seed=0, progress=False))
        assert all(p.device.type == "cpu" for p in model.parameters())
        assert evaluate(model, digits.test).accuracy > 0.9  # 0.98 on the CPU
        scores = splitting_scores(model, batches, inv, "fast")
        importance = taylor_importance(model, inv, batches)
    assert all(p is params[name] for name, p in model.named_parameters())  # moved in place, identity kept
    assert all(s.eigvals.device.type == "cpu" and s.eigvecs.device.type == "cpu" for s in scores.values())
    assert all(v.device.type == "cpu" for v in importance.values())
    cpu_scores = splitting_scores(model, batches, inv, "exact")
    with use_device("cuda"):
        gpu_scores = splitting_scores(model, batches, inv, "exact")
    for gid, s in cpu_scores.items():  # the exact solver runs without TF32 (full_float32)
        torch.testing.assert_close(gpu_scores[gid].eigvals, s.eigvals, rtol=1e-3, atol=1e-5)
    assert torch.backends.cudnn.allow_tf32  # restored after the exact scores


def test_full_float32_switches_tf32_off_and_restores_it():
    from energysplit._device import full_float32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with pytest.raises(RuntimeError):
        with full_float32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            raise RuntimeError("boom")
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


@needs_cuda
def test_compress_runs_on_cuda_end_to_end(tmp_path):
    from energysplit.cli import main

    out = tmp_path / "out"
    code = main(["compress", "--demo", "--data", "digits", "--arch", "vgg_small", "--width", "0.25", "--device", "cuda",
                 "--base-epochs", "1", "--epochs", "0.5", "--out", str(out), "--no-progress"])
    assert code == 0 and (out / "model.es").exists() and (out / "model.onnx").exists()
