"""benchmarks/offspring_similarity.py: each filter's nearest neighbour in its layer."""
import importlib.util
from pathlib import Path

import torch
from torch import nn

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "offspring_similarity.py"
_spec = importlib.util.spec_from_file_location("offspring_similarity", _PATH)
similarity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(similarity)


def test_near_copies_score_near_one_and_other_filters_their_cosine():
    torch.manual_seed(0)
    a, b = torch.randn(8), torch.randn(8)
    conv = nn.Conv2d(2, 3, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([a + 0.01 * b, a - 0.01 * b, b]).view(3, 2, 2, 2))
    model = nn.Sequential(conv, nn.Conv2d(3, 3, 3, groups=3))  # the depthwise conv is not measured
    got = similarity.nearest_filter_similarity(model)
    w = conv.weight.detach().flatten(1)
    cos = nn.functional.cosine_similarity
    assert got.shape == (3,)
    assert got[0] > 0.999 and got[1] > 0.999
    assert torch.isclose(got[2], torch.maximum(cos(w[2], w[0], dim=0), cos(w[2], w[1], dim=0)), atol=1e-6)
