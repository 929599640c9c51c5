"""Where a training step's time goes on this machine: torch.profiler over the project's loop
(``train_one_epoch``) for CE and for SPADE, on the default student, params and data of ``throughput.py``.

Prints, per method, the wall time per step (unprofiled), the share of it spent inside torch operators
(self CPU time of all aten operators, summed over threads' main thread) and what is left: Python,
indexing and bookkeeping between operators; the optimiser's share (PyTorch labels ``Optimizer.step``
itself); then the operators with the most self CPU time.

    python benchmarks/profile_step.py                 # 40 profiled steps each, after a warm-up pass
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import bench_mentor, bench_setup, bench_task  # noqa: E402
from labelnoise import engine  # noqa: E402
from labelnoise.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    s = cfg.train
    b = bench_setup(args.params, args.steps * s.batch_size)
    threads, device, amp, channels_last, x, y, source = b.threads, b.device, b.amp, b.channels_last, b.x, b.y, b.source
    print(f"{s.model}, batch {s.batch_size}, {amp or 'fp32'}, channels_last={channels_last}, {threads} threads, "
          f"{device}, data: {source}")
    mentor, _ = bench_mentor(cfg, device)
    for method in ("ce", "spade"):
        model = b.model()
        opt = engine.make_optimizer(model, s)
        sched = engine.make_scheduler(opt, s, steps_per_epoch=10 * args.steps)
        task = bench_task(b, method, steps_per_epoch=args.steps, epochs=10, mentor=mentor)

        def run(model=model, opt=opt, sched=sched, task=task) -> float:
            t0 = time.perf_counter()
            engine.train_one_epoch(model, x, y, optimizer=opt, scheduler=sched, batch_size=s.batch_size,
                                   device=device, generator=torch.Generator().manual_seed(0), task=task,
                                   autocast_dtype=amp, channels_last=channels_last)
            return (time.perf_counter() - t0) / args.steps

        run()  # warm-up: allocator, oneDNN primitive caches
        per_step = min(run(), run())
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        averages = prof.key_averages()
        wall = per_step * args.steps * 1e6  # µs
        in_ops = sum(e.self_cpu_time_total for e in averages if e.key.startswith("aten::"))
        optimizer = sum(e.cpu_time_total for e in averages if e.key.startswith("Optimizer.step"))
        print(f"\n{method}: {per_step * 1e3:.2f} ms per step unprofiled ({s.batch_size / per_step:.0f} img/s); "
              f"inside torch operators {min(1.0, in_ops / wall):.0%} of it (optimizer step {optimizer / wall:.0%}); "
              f"between operators (Python, indexing, bookkeeping) {max(0.0, 1 - in_ops / wall):.0%}")
        print(averages.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))


if __name__ == "__main__":
    main()
