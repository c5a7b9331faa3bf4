"""A growth run's step log (:class:`StepRecord`) and its checkpoint (:class:`Checkpoint`): the model, the
steps done and the phase in one atomic archive, and the carried SGD momentum beside it, so that an
interrupted run resumes from its last completed step and reaches the same result."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .._io import atomic_save, atomic_write_json


@dataclass
class StepRecord:
    step: int
    cost_before: float
    cost_after: float
    unit: str
    step_budget: float
    neurons_split: int
    split_per_group: dict
    predicted_loss_change: float
    val_accuracy: float
    val_loss: float
    score_seconds: float
    select_seconds: float
    train_seconds: float
    note: str = ""
    epochs: float = 0.0  # the step's fine-tuning epochs


class Checkpoint:
    """``DIR/model.es``: the model archive with the step log and phase in its metadata, one atomic file;
    ``DIR/state.json``, a readable copy; ``DIR/momentum.pt``, a carried momentum by parameter name, written
    before the archive and tagged with its phase and number of steps (after a crash between the two, the
    tags differ and the resumed run restarts its momentum)."""

    def __init__(self, directory: str | Path, arch: dict, input_shape):
        self.dir, self.arch, self.input_shape = Path(directory), arch, tuple(input_shape)

    def save(self, model, steps: list[StepRecord], phase: str, momentum: dict | None = None) -> None:
        from ..graph.archive import save_model
        from ..training.distributed import barrier, is_main

        if is_main():  # data-parallel runs: rank 0 writes, the others wait for it
            if momentum is not None:
                names = {p: n for n, p in model.named_parameters()}
                buffers = {names[p]: b.detach().cpu() for p, b in momentum.items() if p in names}
                atomic_save({"phase": _tag(phase, steps), "buffers": buffers}, self.dir / "momentum.pt")
            state = {"phase": phase, "steps": [asdict(s) for s in steps]}
            save_model(model, self.dir / "model.es", self.arch, self.input_shape, meta={"growth": state})
            atomic_write_json(self.dir / "state.json", state)
        barrier()

    def load(self):
        from ..graph.archive import load_model

        if not (self.dir / "model.es").exists():
            return None
        model, record = load_model(self.dir / "model.es")
        state = record["meta"]["growth"]
        return model, [StepRecord(**s) for s in state["steps"]], state["phase"]

    def momentum(self, model, phase: str, steps: list[StepRecord]) -> dict:
        """The momentum saved with ``phase`` and ``steps`` (what :meth:`load` returned), keyed by ``model``'s
        parameters ({} if none was)."""
        path = self.dir / "momentum.pt"
        record = torch.load(path, map_location="cpu", weights_only=True) if path.exists() else {}
        if record.get("phase") != _tag(phase, steps):
            return {}
        params = dict(model.named_parameters())
        return {params[n]: b for n, b in record["buffers"].items() if n in params}


def _tag(phase: str, steps: list[StepRecord]) -> str:
    return f"{phase}, {len(steps)} steps"
