"""Lightning and PyTorch messages that carry no information for Drama's users, silenced narrowly:
each filter matches one message, so every other warning still shows.

- the litlogger / litmodels tips (advertisements, on every run);
- torch's `isinstance(treespec, LeafSpec)` deprecation, raised inside Lightning's own code;
- "The dirpath has changed ...": a resumed run or an evaluation writes into its own run
  directory by design (the checkpoint's directory is another run's);
- "callbacks used to create the checkpoint need to be provided": `test` / `validate` do not
  need the training callbacks (environment loop, checkpointing, dream media);
- "Precision bf16-mixed is not supported by the model summary": only the summary's size
  estimate is affected;
- "Using ModelCheckpoint with manual optimization": our checkpoints deliberately hold the state
  after the update, consistent with the optimisers.
"""

from __future__ import annotations

import logging
import warnings

WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The dirpath has changed from",
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
    r"Precision .* is not supported by the model summary",
    r"Using ModelCheckpoint with manual optimization",
    # TensorBoard creates the shared run directory first; the CSV logger then warns it is not empty.
    r"Experiment logs directory .* exists and is not empty",
)
INFO_PREFIXES = ("💡 Tip: For seamless cloud",)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(INFO_PREFIXES)


def silence() -> None:
    """Install the filters (idempotent)."""
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
