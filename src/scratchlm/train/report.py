"""Where a run's metrics go (`train.report_to`): metrics.jsonl always, TensorBoard on request.

metrics.jsonl is the run's own record (one JSON line per logged step; resume truncates it to
the checkpoint's step, `scratchlm plot` draws it). With `tensorboard` listed, every number of
every line is also a scalar of the same name in RUN/tensorboard (torch.utils.tensorboard),
at the same step. A resumed run opens the event log with purge_step = the checkpoint's
step + 1, so TensorBoard drops what the interrupted run logged after its checkpoint and no
step appears twice.

    tensorboard --logdir RUN/tensorboard
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_file

TB_DIR = "tensorboard"


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ScratchLMError("train.report_to lists tensorboard but the tensorboard package is not "
                             "installed: pip install 'scratchlm[tensorboard]' (or drop it from "
                             "train.report_to)") from None
    return SummaryWriter


def check_report_to(report_to: list[str]) -> None:
    """Fail before training starts, not at the first log step."""
    if "tensorboard" in report_to:
        _summary_writer()


class Reporter:
    """Appends records to metrics.jsonl and, when asked, TensorBoard. Only rank 0 makes one."""

    def __init__(self, out: Path, report_to: list[str], *, start_step: int) -> None:
        self.path = out / "metrics.jsonl"
        self.tb = None
        if "tensorboard" in report_to:
            # purge_step: drop events an interrupted run wrote after its checkpoint's step.
            self.tb = _summary_writer()(log_dir=str(out / TB_DIR), purge_step=start_step + 1)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines of steps <= `step` (what a resumed run continues from). A last line
    that a kill cut short is not JSON: it is dropped like the later steps."""
    if not path.is_file():
        return
    keep = []
    for ln in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", step + 1) <= step:
            keep.append(ln)
    with atomic_file(path) as f:
        f.write("".join(ln + "\n" for ln in keep))
