"""What a run writes about itself beside its checkpoint, so that a folder says what was run and how it went:

    config.json      the settings, written when the run starts (again on each resume)
    metrics.jsonl    one JSON line per epoch: the epoch's record (loss, token accuracy, held-out accuracy when measured)
    stage{k}.pt      a copy of the checkpoint at the end of each curriculum stage, kept
    tensorboard/     the same figures for TensorBoard, with `TrainConfig.tensorboard`

Only the process that writes (rank 0) makes a `RunRecords`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from coconut_pytorch.training.checkpoints import current_umask
from coconut_pytorch.training.config import TrainConfig

CONFIG_NAME = 'config.json'
METRICS_NAME = 'metrics.jsonl'


class RunRecords:
    """A run's records in `out_dir`. A new run starts `metrics.jsonl` afresh; a resumed one keeps its lines up to the
    checkpoint's epoch (a run stopped between saving an epoch's line and its checkpoint would otherwise log it twice)."""

    def __init__(self, out_dir: Path, config: TrainConfig, resumed_history: list[dict] | None = None):
        self.out_dir = Path(out_dir)
        write_atomically(self.out_dir / CONFIG_NAME, json.dumps(asdict(config), indent = 2) + '\n')
        lines = ''.join(json.dumps(record, allow_nan = False) + '\n' for record in resumed_history or [])
        write_atomically(self.out_dir / METRICS_NAME, lines)
        self.board = None
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError('tensorboard: the tensorboard package is not installed (pip install tensorboard)') from None
            self.board = SummaryWriter(str(self.out_dir / 'tensorboard'))

    def epoch(self, record: dict):
        with open(self.out_dir / METRICS_NAME, 'a') as file:
            file.write(json.dumps(record, allow_nan = False) + '\n')
        if self.board is not None:
            for name, value in record.items():
                if name not in ('epoch', 'stage') and isinstance(value, (int, float)):
                    self.board.add_scalar(name, value, record['epoch'])
            self.board.add_scalar('stage', record['stage'], record['epoch'])
            self.board.flush()

    def keep_stage(self, checkpoint: Path, stage: int) -> Path:
        """A copy of the checkpoint as the snapshot of `stage`'s end (written whole, then renamed into place)."""
        kept = self.out_dir / f'stage{stage}.pt'
        handle, temporary = tempfile.mkstemp(dir = self.out_dir, prefix = f'.{kept.name}.', suffix = '.tmp')
        os.close(handle)
        try:
            shutil.copyfile(checkpoint, temporary)
            os.replace(temporary, kept)
        except BaseException:
            Path(temporary).unlink(missing_ok = True)
            raise
        return kept

    def close(self):
        if self.board is not None:
            self.board.close()


def write_atomically(path: Path, text: str):
    handle, temporary = tempfile.mkstemp(dir = path.parent, prefix = f'.{path.name}.', suffix = '.tmp')
    try:
        os.chmod(temporary, 0o666 & ~current_umask())     # mkstemp's file is private; a record is an ordinary file
        with os.fdopen(handle, 'w') as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok = True)
        raise
