"""`Ensemble`: an inference-time ensemble of trained runs (seed 004's first alternative to staged training:
train QLoRA and GaLore models apart, combine their predictions). For `hpeft test` / `hpeft validate`:

    model:
      class_path: hpeft.Ensemble
      init_args: {members: [runs/llm-qlora/<run_id>, runs/llm-galore/<run_id>], weights: [0.5, 0.5]}

Language models are combined by their weighted mean probability (forward returns its log, which the LM
task's cross-entropy reads as logits), channel estimators by their weighted mean estimate. Each member is
rebuilt from its run's config.yaml and loads the checkpoint it names (best or last)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch
import yaml
from torch import nn

from hpeft import peft
from hpeft.tasks.base import Hybrid


def newest_run(path: Path, checkpoint: str) -> Path:
    """`path` itself when it is a run directory; for an experiment folder (runs/<experiment>), its newest run
    that has the checkpoint."""
    if (path / "config.yaml").is_file() or not path.is_dir():
        return path
    runs = sorted((c.parent.parent for c in path.glob(f"*/checkpoints/{checkpoint}.ckpt")), key=lambda r: r.stat().st_mtime)
    return runs[-1] if runs else path


def load_member(run_dir: str | Path, data_shape: tuple[int, int], checkpoint: str = "best") -> L.LightningModule:
    """The trained module of one run: built from its config.yaml for data of `data_shape`, with the weights of
    checkpoints/<checkpoint>.ckpt (through the module's own on_load_checkpoint, so staged runs rebuild their stage)."""
    from lightning.pytorch.cli import LightningArgumentParser

    run_dir = newest_run(Path(run_dir), checkpoint)
    config_file, ckpt_file = run_dir / "config.yaml", run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    for path in (config_file, ckpt_file):
        if not path.is_file():
            raise FileNotFoundError(f"ensemble member {run_dir}: {path.name} not found at {path}; a member is the run "
                                    f"directory of a finished fit with a {checkpoint}.ckpt")
    config = yaml.safe_load(config_file.read_text())
    model_config = config["model"]
    model_config.setdefault("init_args", {})["data_shape"] = list(data_shape)
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(L.LightningModule, "model", subclass_mode=True)
    with torch.random.fork_rng():
        # Built as its run built it (seeded, then built): a randomly initialised base comes out the same, which
        # a staged run's 4-bit layers (re-derived from the base, not stored) need.
        seed = config.get("seed_everything")
        if isinstance(seed, int):
            L.seed_everything(seed, verbose=False)
        module = parser.instantiate_classes(parser.parse_object({"model": model_config})).model
    state = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"])
    return module.eval().requires_grad_(False)


class Ensemble(L.LightningModule):
    """Weighted mean of several trained runs' predictions, at inference (test / validate / predict)."""

    def __init__(self, members: list[str], weights: list[float] | None = None, checkpoint: str = "best",
                 data_shape: tuple[int, int] = (14, 72)):
        """
        Args:
            members: run directories of finished fits (runs/<experiment>/<run_id>), or experiment folders
                (runs/<experiment>: its newest run with the checkpoint), at least two, of one task.
            weights: one non-negative weight per member (normalised to sum 1); default equal weights.
            checkpoint: which checkpoint of each run to load: best or last.
            data_shape: the data's shape, linked from the data module by the CLI.
        """
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an Ensemble needs at least two members (run directories); got {members}")
        weights = [1.0] * len(members) if weights is None else list(weights)
        if len(weights) != len(members) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights={weights} must be one non-negative number per member ({len(members)}), not all 0")
        if checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint={checkpoint!r}; valid: best, last")
        self.save_hyperparameters()
        self.data_shape = tuple(data_shape)
        self.members = nn.ModuleList(load_member(m, self.data_shape, checkpoint) for m in members)
        tasks = {m.task.name for m in self.members}
        if len(tasks) != 1:
            raise ValueError(f"ensemble members solve different tasks {sorted(tasks)}; combine runs of one task")
        self.task = type(self.members[0].task)()
        self.register_buffer("weights", torch.tensor(weights) / sum(weights), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [member(x) for member in self.members]
        if self.task.name == "lm":  # log of the mean probability: a mixture of the members' distributions
            logp = torch.stack([o.float().log_softmax(-1) for o in outputs])
            return torch.logsumexp(logp + self.weights.log().view(-1, *[1] * (logp.dim() - 1)), dim=0)
        return sum(w * o for w, o in zip(self.weights, outputs))

    # The evaluation loop and the hooks callbacks use are Hybrid's own (they only need task and forward).
    _evaluate = Hybrid._evaluate
    validation_step = Hybrid.validation_step
    test_step = Hybrid.test_step
    predict_step = Hybrid.predict_step
    example_batch = Hybrid.example_batch
    training_loss = Hybrid.training_loss

    @property
    def model(self) -> nn.Module:  # what example_batch reads the device and dtype from
        return self.members

    def run_facts(self) -> dict:
        reports = [peft.parameter_report(m.model) for m in self.members]
        total = sum(r["total"] for r in reports)
        return {
            "task": self.task.name,
            "metric": {"name": f"test/{self.task.metric}", "higher_is_better": self.task.higher_is_better},
            "variant": "Ensemble",
            "hparams": {"members": list(self.hparams.members), "weights": self.weights.tolist(),
                        "checkpoint": self.hparams.checkpoint},
            "backbone": {"name": f"ensemble of {len(self.members)}",
                         "members": [m.backbone_config.model_name for m in self.members]},
            "methods": [],
            "params": {"total": total, "trainable": 0, "base": total, "trainable_pct": 0.0},
            "layers": [],
        }

    def adapter_state(self) -> nn.Module:
        return self.members

    def export_base(self) -> None:
        pass
