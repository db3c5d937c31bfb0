"""Where a run's wall time went, from its `metrics.jsonl`: per stage, the mean seconds an epoch and its parts
(`seconds_data`, `seconds_train`, `seconds_capture`, `seconds_eval`, and the rest: checkpoint, records, anything
between two epochs), and the first held-out evaluation (`--eval-every`) at or above a threshold, with the training
seconds before it (the run's `seconds` less the evaluations before it).

    python scripts/epoch_times.py runs/prosqa/metrics.jsonl
    python scripts/epoch_times.py runs/prosqa/metrics.jsonl --threshold 0.98
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

PARTS = ('seconds_data', 'seconds_train', 'seconds_capture', 'seconds_eval')


def read_records(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records or any('seconds' not in record or 'stage' not in record for record in records):
        raise ValueError(f'{path}: expected one JSON record an epoch with "stage" and "seconds" (a run\'s metrics.jsonl)')
    return records


def epoch_walls(records: list[dict]) -> list[float]:
    """Each epoch's wall time: from the previous record's `seconds` (taken at the end of its steps) to this one's,
    so it holds the previous epoch's evaluation and checkpoint, then this epoch's batches and steps."""
    walls, previous = [], 0.
    for record in records:
        walls.append(record['seconds'] - previous)
        previous = record['seconds']
    return walls


def summary(records: list[dict], threshold: float) -> str:
    walls = epoch_walls(records)
    by_stage = defaultdict(list)
    for index, (record, wall) in enumerate(zip(records, walls)):
        # the eval time of the epoch before is inside this epoch's wall; its rest is what no field names
        eval_before = records[index - 1].get('seconds_eval', 0.) if index > 0 else 0.
        named = sum(record.get(part, 0.) for part in ('seconds_data', 'seconds_train')) + eval_before
        by_stage[record['stage']].append(dict(wall = wall, other = wall - named, **{part: record.get(part, 0.) for part in PARTS}))

    lines = ['stage  epochs  wall s/epoch  data  train  (capture)  eval  other']
    for stage in sorted(by_stage):
        rows = by_stage[stage]
        mean = lambda key: sum(row[key] for row in rows) / len(rows)
        lines.append(f'{stage:>5}  {len(rows):>6}  {mean("wall"):>12.2f}  {mean("seconds_data"):>4.2f}  {mean("seconds_train"):>5.2f}'
                     f'  {mean("seconds_capture"):>9.2f}  {mean("seconds_eval"):>4.2f}  {mean("other"):>5.2f}')
    eval_total = sum(record.get('seconds_eval', 0.) for record in records)
    lines.append(f'{len(records)} epochs, {records[-1]["seconds"]:.1f} s in all, of which held-out evaluations {eval_total:.1f} s '
                 f'and graph captures {sum(record.get("seconds_capture", 0.) for record in records):.1f} s')

    evaluated_before = 0.
    for record in records:
        if record.get('eval_accuracy') is not None and record['eval_accuracy'] >= threshold:
            lines.append(f'first held-out accuracy >= {threshold}: {record["eval_accuracy"]} after epoch {record["epoch"]} (stage {record["stage"]}), '
                         f'{record["seconds"] - evaluated_before:.1f} s of training ({record["seconds"]:.1f} s with the evaluations before it)')
            break
        evaluated_before += record.get('seconds_eval', 0.)
    else:
        lines.append(f'no held-out evaluation reached {threshold}')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('metrics', type = Path, help = "a run's metrics.jsonl")
    parser.add_argument('--threshold', type = float, default = 0.98, help = 'held-out accuracy to report the first crossing of')
    args = parser.parse_args()
    if not 0. <= args.threshold <= 1.:
        parser.error(f'--threshold must be in [0, 1], got {args.threshold}')
    print(summary(read_records(args.metrics), args.threshold))


if __name__ == '__main__':
    main()
