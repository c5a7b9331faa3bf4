"""``energysplit models``, ``train`` and ``inspect``: the zoo, training a model, a model's neuron groups."""
from __future__ import annotations

import json

from .common import DEVICE_HELP, option

MODEL_HELP = ("zoo name, torchvision:<name> (random weights), package.module:factory, or a saved model archive")


def add_data_args(p) -> None:
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, digits, or an ImageFolder directory (default: %(default)s)")
    p.add_argument("--data-dir", help="directory holding the Fashion-MNIST IDX files "
                                      "(default: $ENERGYSPLIT_FASHION_MNIST or the Debian package's)")
    p.add_argument("--subset", type=int, help="use only the first N training images (quick runs)")


def add_models(p):
    return run_models


def run_models(args) -> int:
    from ..zoo import DEFAULT_MODEL, list_models

    for name in list_models():
        print(name + ("  (default)" if name == DEFAULT_MODEL else ""))
    return 0


def add_train(p):
    from ..training.loop import TrainConfig

    p.add_argument("--arch", help="zoo model name (default: the zoo's default)")
    p.add_argument("--width", type=float, help="width multiplier")
    p.add_argument("--act", help="activation (relu, relu6, silu, hardswish, ...)")
    add_data_args(p)
    option(p, TrainConfig, "epochs", "training epochs")
    option(p, TrainConfig, "lr", "SGD learning rate")
    option(p, TrainConfig, "batch_size", "training batch size")
    option(p, TrainConfig, "seed", "random seed")
    p.add_argument("--out", help="save the trained state dict here (.pt)")
    p.add_argument("--json", action="store_true", help="print the result record as JSON")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default: %(default)s)")
    return run_train


def run_train(args) -> int:
    from .._device import use_device
    from .._io import atomic_save
    from ..pipeline.inputs import load_data
    from ..training.loop import TrainConfig, evaluate, seed_everything, train
    from ..zoo import DEFAULT_MODEL, create_model

    splits = load_data(args.data, args.data_dir, args.subset)
    arch = args.arch or DEFAULT_MODEL
    seed_everything(args.seed)
    model = create_model(arch, in_channels=splits.in_channels, num_classes=splits.num_classes,
                         width=args.width, act=args.act)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    with use_device(args.device):
        result = train(model, splits.train, config, val=splits.val)
        test = evaluate(model, splits.test)
    params = sum(p.numel() for p in model.parameters())
    record = {"arch": arch, "data": splits.name, "params": params, **result.to_dict(),
              "test_accuracy": test.accuracy, "test_loss": test.loss}
    if args.out:
        atomic_save(model.state_dict(), args.out)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{arch} on {splits.name}: {params:,} params, {result.epochs:g} epochs in {result.seconds:.1f} s, "
              f"val acc {result.val_accuracy:.4f}, test acc {test.accuracy:.4f}")
    return 0


def add_inspect(p):
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--input-shape", help="input shape without the batch dim, e.g. 1,28,28 (default: an archive's "
                                         "own, 1,28,28 for zoo models, 3,224,224 otherwise)")
    p.add_argument("--kwargs", default="{}", help='constructor arguments as JSON, e.g. \'{"width": 0.5}\'')
    p.add_argument("--json", action="store_true", help="print the groups as JSON")
    return run_inspect


def run_inspect(args) -> int:
    import pandas as pd

    from ..errors import ConfigError
    from ..graph.trace import build_inventory
    from ..pipeline.inputs import parse_shape, resolve_model

    try:
        kwargs = json.loads(args.kwargs)
    except ValueError as exc:
        raise ConfigError(f"--kwargs must be a JSON object like '{{\"width\": 0.5}}': {exc}") from exc
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--kwargs must be a JSON object like '{{\"width\": 0.5}}', got {args.kwargs!r}")
    shape = parse_shape(args.input_shape) if args.input_shape else None
    model, shape = resolve_model(args.model, shape, kwargs)
    inv = build_inventory(model, shape)
    if args.json:
        print(json.dumps([g.to_dict() for g in inv], indent=2))
        return 0
    table = pd.DataFrame([(g.id, g.width, ",".join(op.act or op.kind for op in g.chain),
                           ("splittable" + (f": {g.reason}" if len(g.producers) > 1 else "")) if g.splittable
                           else ("prunable only: " if g.prunable else "frozen: ") + g.reason)
                          for g in inv], columns=["group", "width", "chain", "status"])
    print(table.to_markdown(index=False, tablefmt="plain"))
    print(f"{len(inv)} groups on input {tuple(shape)}: {len(inv.splittable())} splittable, "
          f"{len(inv.prunable())} prunable, {sum(not g.prunable for g in inv)} frozen")
    return 0
