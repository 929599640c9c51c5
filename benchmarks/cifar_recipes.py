"""Which network and budget to train CIFAR with on a CPU: candidates trained with cross-entropy on the *clean*
labels of a prepared CIFAR-10 (every train image, the trusted subset included: the ceiling of the recipe), their
test accuracy against wall-clock minutes on this machine.

The data is the file stage ``download`` writes (``data/prepared.npz``), e.g. after
``python cli.py prepare-cifar10n ...``, ``python cli.py preset cifar10n_jpeg --apply`` and ``python cli.py download``.
Every candidate trains through the project's engine with the ``train`` recipe of ``--params``, only the network,
the epochs and the peak lr changed: ``MODEL:EPOCHS[:LR]``. ``--precision`` times the same candidates in another
precision (``fp32`` is what a CPU without native bf16 runs). Prints one row per candidate and writes
``reports/cifar_recipes.json``.

    python benchmarks/cifar_recipes.py cnn:15 cnn_wide:15 convpool:15 preact_resnet20:15
    python benchmarks/cifar_recipes.py convpool:15 --precision fp32 --limit 5000   # timing only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labelnoise import engine, runtime  # noqa: E402
from labelnoise.config import load_config  # noqa: E402
from labelnoise.datasets import load_prepared  # noqa: E402
from labelnoise.io import save_json  # noqa: E402
from labelnoise.models import channel_stats, create_model  # noqa: E402
from labelnoise.views import TrainView  # noqa: E402
from stages.common import PATHS  # noqa: E402


def cpu_name() -> str:
    """The CPU's model name (Linux), with whether ``auto`` precision finds native bf16 there (the runtime's test)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    native = runtime.resolve_precision("auto", torch.device("cpu")) == torch.bfloat16
    return f"{model} ({'native' if native else 'no native'} bf16)"


def clean_view(prepared_path: Path, limit: int) -> TrainView:
    """Every train image (the trusted subset's too) with its true label, the test split, no clean subset (the
    last epoch is the result): a benchmark of the recipe, not of a noisy-label method."""
    p = load_prepared(prepared_path)
    train = np.sort(np.concatenate([p.train_idx, p.clean_idx]))
    if limit:
        train = np.random.default_rng(0).permutation(train)[:limit]
    x, y = torch.from_numpy(p.images), torch.from_numpy(p.labels)
    empty = x[:0]
    return TrainView(x_train=x[train], y_train=y[train], x_clean=empty, y_clean=y[:0], x_val=empty, y_val=y[:0],
                     x_test=x[p.test_idx], y_test=y[p.test_idx], classes=list(p.classes), dataset=p.dataset)


def run_candidate(spec: str, view: TrainView, cfg, precision: str, device: torch.device) -> dict:
    """Train ``MODEL:EPOCHS[:LR]`` once; its final test accuracy and seconds."""
    name, epochs, *lr = spec.split(":")
    recipe = dataclasses.replace(cfg.train, model=name, epochs=int(epochs), precision=precision,
                                 lr=float(lr[0]) if lr else cfg.train.lr)
    _, channels, height, width = view.x_train.shape
    mean, std = channel_stats(view.x_train)
    model = runtime.seeded(lambda: create_model(name, num_classes=view.num_classes, in_channels=channels,
                                                image_size=max(height, width), mean=mean, std=std), cfg.base.seed)
    start = time.perf_counter()
    result = engine.fit(model, view, recipe=recipe, seed=cfg.base.seed, device=device, progress=False,
                        log=lambda line: print(f"  {name}: {line}", flush=True), purpose="recipe benchmark")
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return {"candidate": spec, "model": name, "epochs": int(epochs), "lr": recipe.lr, "params": params,
            "precision": runtime.precision_name(runtime.resolve_precision(precision, device)),
            "test_acc": result.history[-1]["test_acc"], "seconds": round(seconds, 1),
            "n_train": len(view.x_train), "images_per_s": round(len(view.x_train) * int(epochs) / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("candidates", nargs="+", help="MODEL:EPOCHS[:LR], e.g. cnn:15 convpool:15:0.05")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", type=Path, default=Path(PATHS.prepared))
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16 (train.precision)")
    ap.add_argument("--limit", type=int, default=0, help="train on this many images only (0: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "cifar_recipes.json")
    args = ap.parse_args()
    cfg = load_config(args.params)
    threads = runtime.set_threads(cfg.base.threads)
    device = runtime.resolve_device(cfg.base.device)
    view = clean_view(args.prepared, args.limit)
    cpu = cpu_name()
    print(f"{view.dataset}: {len(view.x_train)} train, {len(view.x_test)} test images; {threads} threads; {cpu}")
    rows = []
    for spec in args.candidates:
        rows.append(run_candidate(spec, view, cfg, args.precision, device))
        r = rows[-1]
        print(f"{r['candidate']:<24} {r['precision']:<5} test {r['test_acc']:.2%}  {r['seconds'] / 60:6.1f} min  "
              f"{r['images_per_s']:7.0f} img/s  {r['params'] / 1e6:.2f} M params", flush=True)
    if args.out.exists():  # keep the rows of earlier calls (other candidates, precisions or sizes)
        done = {(r["candidate"], r["precision"], r["n_train"]) for r in rows}
        rows[:0] = [r for r in json.loads(args.out.read_text())["rows"]
                    if (r["candidate"], r["precision"], r["n_train"]) not in done]
    out = {"dataset": view.dataset, "threads": threads, "cpu": cpu, "rows": rows}
    save_json(args.out, out)


if __name__ == "__main__":
    main()
