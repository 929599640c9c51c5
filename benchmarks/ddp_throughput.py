"""Training throughput of one process group: the project's loop (``train_one_epoch``) on the default student,
params and Fashion-MNIST-shaped data of ``throughput.py``, each global mini-batch of ``student.batch_size``
split across the ranks when started by torchrun. Rank 0 prints one JSON line: {"img_s" (median of the
repeats, global images per second), "world", "threads"}. ``benchmarks/suite.py`` runs it with one process
and with ``torchrun --nproc_per_node 2`` on the same cores.

    python benchmarks/ddp_throughput.py
    torchrun --standalone --nproc_per_node 2 benchmarks/ddp_throughput.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import bench_setup  # noqa: E402
from labelnoise import distributed, engine, runtime  # noqa: E402
from labelnoise.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--batches", type=int, default=60, help="global mini-batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    s = cfg.train
    distributed.init(runtime.resolve_device(cfg.base.device).type)
    n = args.batches * s.batch_size
    b = bench_setup(args.params, n)
    device, model = b.device, b.model()
    trained = distributed.wrap(model, device)
    optimizer = engine.make_optimizer(model, s)
    scheduler = engine.make_scheduler(optimizer, s, steps_per_epoch=args.batches * (args.repeats + 1))
    generator = torch.Generator().manual_seed(cfg.base.seed)
    rates = []
    for r in range(args.repeats + 1):  # the first is the warm-up
        t0 = time.perf_counter()
        engine.train_one_epoch(trained, b.x, b.y, optimizer=optimizer, scheduler=scheduler,
                                 batch_size=s.batch_size, device=device, generator=generator, autocast_dtype=b.amp,
                                 channels_last=b.channels_last)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if r:
            rates.append(n / (time.perf_counter() - t0))
    result = {"img_s": statistics.median(rates), "world": distributed.world_size(), "threads": b.threads}
    if distributed.is_main():
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
