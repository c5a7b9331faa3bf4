"""Tracing into the neuron inventory: coupling facts on the zoo, torchvision models and small customs."""
import pytest
import torch
import torch.nn.functional as F
import torchvision as tv
from torch import nn

from energysplit.errors import UnsupportedModelError
from energysplit.graph.channels import RESIDUAL
from energysplit.graph.trace import build_inventory
from energysplit.zoo import create_model, list_models


def kinds(group):
    return [(op.kind, op.act) if op.kind == "act" else op.kind for op in group.chain]


@pytest.mark.parametrize("name", list_models())
def test_zoo_models_trace_and_classifier_frozen(name):
    model = create_model(name, width=0.25)
    inv = build_inventory(model, (1, 28, 28))
    assert len(inv) > 2 and inv.splittable()
    last = list(inv)[-1]
    assert last.reason == "model output" and not last.splittable and not last.prunable
    # every parameterised conv/linear is a producer of exactly one group or a depthwise follower
    owners = [p for g in inv for p in g.producers] + [f for g in inv for f in g.followers]
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(convs) == sorted(n for n in owners if n in convs)


def test_mobilenet_v2_facts():
    inv = build_inventory(create_model("mobilenet_v2"), (1, 28, 28))
    exp = inv["features.3.conv.0.0:out"]
    assert exp.splittable and exp.width == 144
    assert kinds(exp) == ["bn", ("act", "relu6"), "dw", "bn", ("act", "relu6")]
    assert exp.followers == ("features.3.conv.0.1", "features.3.conv.1.0", "features.3.conv.1.1")
    assert [c.module for c in exp.consumers] == ["features.3.conv.2"]
    res = inv["features.2.conv.2:out"]  # stage 24: two blocks joined by a residual add
    assert res.producers == ("features.2.conv.2", "features.3.conv.2")
    assert res.splittable and res.prunable and res.reason == f"{RESIDUAL} (2 producers)"  # split jointly
    assert [c.module for c in res.consumers] == ["features.3.conv.0.0", "features.4.conv.0.0"]
    single = inv["features.1.conv.1:out"]  # first projection: no residual, a linear neuron
    assert single.splittable and kinds(single) == ["bn"]
    assert inv["features.18.0:out"].consumers[0].module == "classifier.1"
    assert list(inv)[0].id == "features.0.0:out" and all(g.producers for g in inv)  # input: no group


def test_mobilenet_v1_depthwise_is_follower():
    inv = build_inventory(create_model("mobilenet_v1", width=0.25), (1, 28, 28))
    stem = inv["features.0.0:out"]
    assert stem.followers == ("features.0.1", "features.1.0.0", "features.1.0.1")
    assert kinds(stem) == ["bn", ("act", "relu"), "dw", "bn", ("act", "relu")]
    assert not any(g.id.startswith("features.1.0.0") for g in inv)


def test_vgg_flatten_repeat_and_linear_chain():
    inv = build_inventory(tv.models.vgg11_bn(weights=None, num_classes=10), (3, 32, 32))
    last_conv = inv["features.25:out"]
    assert last_conv.consumers[0].module == "classifier.0" and last_conv.consumers[0].repeat == 49
    assert kinds(last_conv) == ["bn", ("act", "relu")]  # max pool in between is transparent
    assert kinds(inv["classifier.0:out"]) == [("act", "relu")]


def test_resnet18_torchvision_couples_stem_with_stage():
    inv = build_inventory(tv.models.resnet18(weights=None), (3, 32, 32))
    g = inv["conv1:out"]
    assert g.producers == ("conv1", "layer1.0.conv2", "layer1.1.conv2") and g.reason == f"{RESIDUAL} (3 producers)"
    assert set(inv["layer2.0.conv2:out"].producers) == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"}


def test_mobilenet_v3_squeeze_excitation_gate_is_follower():
    inv = build_inventory(tv.models.mobilenet_v3_small(weights=None), (3, 32, 32))
    g = inv["features.4.block.0.0:out"]
    assert g.splittable and "features.4.block.2.fc2" in g.followers
    assert {c.module for c in g.consumers} == {"features.4.block.2.fc1", "features.4.block.3.0"}
    assert kinds(g) == ["bn", ("act", "hardswish"), "dw", "bn", ("act", "hardswish")]
    assert g.reason.startswith("note:")
    assert inv["features.4.block.2.fc1:out"].consumers[0].module == "features.4.block.2.fc2"


class CatNet(nn.Module):
    """Concat of two branches, a functional residual add, a 1-output conv, a flatten head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 1)
        self.bn = nn.BatchNorm2d(5)
        self.c = nn.Conv2d(9, 6, 3, padding=1)
        self.d = nn.Conv2d(6, 6, 1)
        self.one = nn.Conv2d(6, 1, 1)  # groups=1, one output channel: a normal producer
        self.head = nn.Linear(7 * 4 * 4, 3)

    def forward(self, x):
        y = torch.cat([F.silu(self.a(x)), torch.tanh(self.bn(self.b(x)))], dim=1)
        z = F.relu(self.c(y))
        z = z + self.d(z)
        z = torch.cat([z, self.one(z)], 1)
        return self.head(torch.flatten(F.max_pool2d(z, 2), 1))


def test_custom_concat_add_flatten():
    inv = build_inventory(CatNet(), (3, 8, 8))
    assert [c for c in inv["a:out"].consumers] == [c for c in inv["a:out"].consumers if c.module == "c"]
    assert inv["a:out"].consumers[0].offset == 0 and inv["b:out"].consumers[0].offset == 4
    assert kinds(inv["b:out"]) == ["bn", ("act", "tanh")]
    assert inv["b:out"].chain[1].target == "torch.tanh"
    c = inv["c:out"]
    assert c.producers == ("c", "d") and c.reason.startswith(RESIDUAL) and c.prunable
    head = {x.module: x for x in c.consumers}["head"]
    assert (head.offset, head.repeat) == (0, 16)
    one = inv["one:out"]
    assert one.width == 1 and one.splittable and one.producers == ("one",)
    assert (one.consumers[0].offset, one.consumers[0].repeat) == (6 * 16, 16)


def test_grouped_conv_cuts_its_groups_into_blocks():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 4, 1),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    inv = build_inventory(model, (3, 8, 8))
    for gid in ("0:out", "1:out"):
        assert inv[gid].splittable and inv[gid].prunable and (inv[gid].blocks, inv[gid].block_width) == (2, 4)
    assert inv["3:out"].splittable and inv["3:out"].blocks == 1


class Weird(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = torch.cumsum(self.conv(x), dim=1)
        return self.head(y.mean((2, 3)))


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.fc(x))


def test_layernorm_freezes_the_channels_it_normalizes():
    """LayerNorm mixes every channel into each output (mean, variance): its input group is frozen with
    a reason naming it, not refused."""
    g = build_inventory(WithLayerNorm(), (4,))["fc:out"]
    assert not g.splittable and not g.prunable
    assert g.reason == "LayerNorm normalizes across the channels ('norm')"


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x


@pytest.mark.parametrize("model, shape, words", [
    (Weird(), (3, 4, 4), ["torch.cumsum", "cumsum"]),
    (DataDependent(), (4,), ["torch.fx cannot trace DataDependent"]),
    (nn.Sequential(nn.Conv2d(3, 8, 1), nn.PixelShuffle(2)), (3, 4, 4), ["PixelShuffle", "'1'"]),
])
def test_unsupported_ops_are_named(model, shape, words):
    with pytest.raises(UnsupportedModelError) as info:
        build_inventory(model, shape)
    for word in words:
        assert word in str(info.value)


def test_tracing_leaves_bn_statistics_and_mode_alone():
    model = create_model("vgg_small", width=0.25).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_inventory(model, (1, 28, 28))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_inspect_cli_prints_groups(capsys):
    from energysplit.cli import main

    assert main(["inspect", "mobilenet_v2", "--input-shape", "1,28,28"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line.split() for line in lines if line.startswith("features.3.conv.0.0:out"))
    assert row[1:] == ["144", "bn,relu6,dw,bn,relu6", "splittable"]
    assert any(line.startswith("features.2.conv.2:out") and "splittable" in line for line in lines)
    assert any(line.startswith("classifier.1:out") and "frozen: model output" in line for line in lines)
    assert main(["inspect", "torchvision:resnet18", "--input-shape", "3,32,32", "--json"]) == 0
    import json

    groups = json.loads(capsys.readouterr().out)
    assert groups[-1]["id"] == "fc:out" and groups[-1]["width"] == 1000
    assert main(["inspect", "mobilenet_v2", "--input-shape", "1,x"]) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_chain_stops_at_pooling_inside_it_and_at_products():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            y = F.relu(self.bn(F.max_pool2d(self.a(x), 2)))  # pooling between the conv and its BN
            z = torch.tanh(self.b(y))
            return self.head((z * z).mean((2, 3)))  # a product: not channel-wise

    inv = build_inventory(Net(), (3, 10, 10))
    assert inv["a:out"].chain == () and inv["a:out"].followers == ("bn",) and inv["a:out"].reason.startswith("note:")
    assert kinds(inv["b:out"]) == [("act", "tanh")] and inv["b:out"].reason.startswith("note:")
