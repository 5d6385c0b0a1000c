"""Per-epoch (or per-step) metrics: JSON lines and CSV in the run folder, and a PNG of the curves."""
import csv
import json
import math
from pathlib import Path
from typing import Dict, List

__all__ = ['MetricsLogger']

# Curves that share a panel, by a word in their name; any other metric gets a panel of its own.
_PANELS = (('loss', ('loss',)), ('accuracy', ('top1', 'top5', 'acc', 'map', 'miou')), ('learning rate', ('lr',)))
_X_KEYS = ('epoch', 'step')


class MetricsLogger:
    """Appends records (dicts of numbers and strings) to run_dir/metrics.jsonl and run_dir/metrics.csv.

    Existing files are read back, so a resumed run continues its log. With `enabled=False`
    (every rank but the first) nothing is read or written.
    """

    def __init__(self, run_dir, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.jsonl_path = self.run_dir / 'metrics.jsonl'
        self.csv_path = self.run_dir / 'metrics.csv'
        self.records: List[Dict] = []
        if enabled and self.jsonl_path.is_file():
            with open(self.jsonl_path) as f:
                self.records = [json.loads(line) for line in f if line.strip()]

    def log(self, record: Dict):
        """Append one record to both files (the CSV gains columns when new keys appear)."""
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in record.items()}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        old_columns = self._columns()
        self.records.append(record)
        with open(self.jsonl_path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        if self.csv_path.is_file() and set(record) <= set(old_columns):
            with open(self.csv_path, 'a', newline='') as f:
                csv.DictWriter(f, old_columns).writerow(record)
        else:
            self._rewrite_csv()

    def truncate(self, key: str, value):
        """Forget records whose `key` is `value` or later (a resumed run redoes them)."""
        if not self.enabled:
            return
        self.records = [r for r in self.records if key not in r or r[key] < value]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.jsonl_path, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in self.records)
        self._rewrite_csv()

    def _columns(self) -> List[str]:
        columns = {}
        for record in self.records:
            columns.update(dict.fromkeys(record))
        return list(columns)

    def _rewrite_csv(self):
        with open(self.csv_path, 'w', newline='') as f:
            writer = csv.DictWriter(f, self._columns())
            writer.writeheader()
            writer.writerows(self.records)

    def plot(self, path=None) -> Path:
        """Draw every numeric metric against epoch (or step) into a PNG; returns its path."""
        path = Path(path) if path is not None else self.run_dir / 'curves.png'
        if not self.enabled:
            return path
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        x_key = next((k for k in _X_KEYS if any(k in r for r in self.records)), None)
        panels: Dict[str, List[str]] = {}
        for key in self._columns():
            if key == x_key or not any(_is_number(r.get(key)) for r in self.records):
                continue
            title = next((t for t, words in _PANELS if any(w in key.lower() for w in words)), key)
            panels.setdefault(title, []).append(key)
        fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * max(1, len(panels)), 3.5), squeeze=False)
        for ax, (title, keys) in zip(axes[0], panels.items()):
            for key in keys:
                points = [(r.get(x_key, i), r[key]) for i, r in enumerate(self.records) if _is_number(r.get(key))]
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker='o' if len(xs) < 30 else None, label=key)
            ax.set_title(title)
            ax.set_xlabel(x_key or 'record')
            ax.grid(alpha=0.3)
            ax.legend(fontsize='small')
            if title == 'learning rate':
                ax.ticklabel_format(axis='y', style='sci', scilimits=(-2, 2))
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _plain(value):
    """Numbers from tensors and NumPy scalars, so that records serialise."""
    if hasattr(value, 'item'):
        return value.item()
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
