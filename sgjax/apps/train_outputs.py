"""What ``sgjax train`` reads and writes around a run, for one device and for
``--pipeline`` alike: where it writes (:class:`Outputs`, checked before any work), the
configured dataset (flattened, the batch size checked against it), and the JSON result."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from sgjax.infra.config import RunConfig


class Outputs(NamedTuple):
    """Where a run writes (not part of its configuration: may change on resume)."""

    json: Path | None = None
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 1000
    resume: bool = False
    progress: bool = True
    adopt_older: bool = False


_OUTPUT_FLAGS = (
    "json",
    "checkpoint_dir",
    "checkpoint_every",
    "resume",
    "no_progress",
    "adopt_older_checkpoints",
)


def load_dataset(config: RunConfig):
    """The configured dataset (``--data-dir`` / ``--train-size`` only reach file datasets)."""
    from sgjax.infra import data

    key = config.dataset.replace("-", "_").lower()
    if key in data.FILE_DATASETS:
        return data.load(config.dataset, data_dir=config.data_dir, n_train=config.train_size)
    return data.load(config.dataset, seed=config.seed)  # the split / draw of generated sets


def _flat_data(config: RunConfig):
    ds = load_dataset(config)
    x_train = ds.x_train.reshape(len(ds.x_train), -1)
    x_test = ds.x_test.reshape(len(ds.x_test), -1)
    if config.batch_size > len(x_train):
        raise ValueError(
            f"--batch-size {config.batch_size} is larger than the {len(x_train)} training "
            f"examples of {ds.name}; use at most {len(x_train)}"
        )
    return ds, x_train, x_test


def _check_outputs(outputs: Outputs) -> None:
    """Refuse unwritable output paths before any work (not after training)."""
    from sgjax.infra.jsonio import check_writable

    if outputs.json is not None:
        check_writable(outputs.json, name="--json")
    if outputs.checkpoint_dir is not None:
        check_writable(outputs.checkpoint_dir, name="--checkpoint-dir", directory=True)


def _write_json(path: Path | None, result: dict[str, Any]) -> None:
    """Strict JSON (sgjax.infra.jsonio); if writing fails, the results are kept elsewhere."""
    if path is not None:
        from sgjax.infra.jsonio import write_or_keep

        write_or_keep(path, result, name="--json")
