"""Training throughput: the project's loop (``train_one_epoch``) against a bare PyTorch loop, and the
SPADE student step (MentorNet weighting) and the MentorMix student step against the plain cross-entropy step.

All train the default student model with the default params (batch size, SGD settings, schedule,
precision and memory format as ``fit`` resolves them on this machine) on the same Fashion-MNIST-shaped
uint8 data: the first images of the prepared file when present, else random uint8. Repeats are
interleaved (the order rotates every repeat) so load from other processes hits all alike.
Prints img/s for each, the ratio project/bare (target >= 0.95), the SPADE step time over the CE
step time (target <= 1.15) and the MentorMix step time over the CE step time (no target: it runs a
second, gradient-free forward pass on the batch before the mixed one), and writes reports/bench.json.

SPADE is timed after burn-in (every step calls the mentor: the costlier path), with
``student.spade.sample_weights`` as configured and no mentor refits (those run a few times per training, not
per step). The mentor is models/mentor.pt when present (10 classes), else a freshly initialised one
(its weights do not change its speed). MentorMix is timed the same way (after burn-in, same mentor),
with ``student.mentormix.mixup_alpha`` and ``student.mentormix.second_reweight`` as configured.

    python benchmarks/throughput.py                 # make bench
    python benchmarks/throughput.py --batches 30 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labelnoise import engine, runtime  # noqa: E402
from labelnoise.config import load_config  # noqa: E402
from labelnoise.io import save_json  # noqa: E402
from labelnoise.models import channel_stats, create_model  # noqa: E402
from stages.common import PATHS  # noqa: E402

TARGET = 0.95
SPADE_TARGET = 1.15  # issue: SPADE step time / CE step time


def bench_data(n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """n Fashion-MNIST-shaped images (uint8 (n, 1, 28, 28)) and random labels (n,); labels do not change speed."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    prepared = Path(PATHS.prepared)
    if prepared.is_file():
        from labelnoise.datasets import load_prepared

        p = load_prepared(prepared)
        if p.images.shape[1:] == (1, 28, 28) and len(p.train_idx) >= n:
            return torch.from_numpy(np.ascontiguousarray(p.images[p.train_idx[:n]])), y, f"{p.dataset} ({prepared})"
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g), y, "random uint8"


@dataclasses.dataclass
class Bench:
    """The default student's set-up on this machine, as ``fit`` resolves it, and the benchmark data on the device."""

    cfg: Any
    threads: int
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    x: torch.Tensor
    y: torch.Tensor
    source: str
    mean: list[float]
    std: list[float]

    def model(self) -> torch.nn.Module:
        """A fresh default student (seeded), on the device, in the chosen memory format."""
        torch.manual_seed(self.cfg.base.seed)
        model = create_model(self.cfg.train.model, num_classes=10, in_channels=1, image_size=28, mean=self.mean,
                             std=self.std)
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def settled(cfg: Any) -> Any:
    """``cfg`` with every ``auto`` param settled as an estimate of 40 % symmetric noise would (the default run's);
    their values change no step's cost, only what the steps compute."""
    from labelnoise import auto

    k, rate = 10, 0.4
    transition = np.full((k, k), rate / (k - 1))
    np.fill_diagonal(transition, 1 - rate)
    estimate = auto.NoiseEstimate(rate=rate, transition=transition, use="confusion")
    return auto.settle(cfg, estimate, auto.auto_keys(cfg, list(auto.RULES)))[0]


def bench_setup(params: str | Path, n: int) -> Bench:
    """Threads, seeds, device, precision and memory format from ``params``; ``n`` images of :func:`bench_data`."""
    cfg = settled(load_config(params))
    s = cfg.train
    threads = runtime.set_threads(cfg.base.threads)
    runtime.seed_everything(cfg.base.seed, deterministic=cfg.base.deterministic)
    device = runtime.resolve_device(cfg.base.device)
    x, y, source = bench_data(n, seed=cfg.base.seed)
    mean, std = channel_stats(x)
    return Bench(cfg=cfg, threads=threads, device=device, amp=runtime.resolve_precision(s.precision, device),
                 channels_last=runtime.resolve_channels_last(s.channels_last, device), x=x.to(device),
                 y=y.to(device), source=source, mean=mean, std=std)


def bench_mentor(cfg, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The trained mentor (models/mentor.pt) when it fits 10 classes, else a fresh one of the same shape."""
    from labelnoise import mentornet

    path = Path(PATHS.mentor_model)
    if path.is_file():
        try:
            mentor = mentornet.load_mentor(path, device)
            if mentor.num_classes == 10:
                return mentor, str(path)
        except ValueError:
            pass
    torch.manual_seed(cfg.mentor.seed)
    return mentornet.MentorNet.from_config(cfg.mentor, num_classes=10).to(device), "fresh init"


def bench_task(b: Bench, method: str, *, steps_per_epoch: int, epochs: int, mentor: torch.nn.Module) -> engine.Task:
    """The engine task of ``method`` (from the method registry) for the benchmark data: the default student params
    with no burn-in and no mentor refits, so every timed step is a full step of the method."""
    from labelnoise.methods import MethodContext, get_method
    from labelnoise.views import TrainView

    block = get_method(method).settings(b.cfg.student)  # its settings (none for ce)
    if block is not None and hasattr(block, "burn_in"):
        block = dataclasses.replace(block, burn_in=0.0, mentor_update="none")
    recipe = dataclasses.replace(b.cfg.train, batch_size=-(-b.x.shape[0] // steps_per_epoch), epochs=epochs)
    view = TrainView(x_train=b.x, y_train=b.y, x_clean=b.x[:0], y_clean=b.y[:0], x_val=b.x[:0], y_val=b.y[:0],
                     x_test=b.x[:0], y_test=b.y[:0], classes=[str(c) for c in range(10)], dataset="fashion_mnist")
    ctx = MethodContext(name=method, params=block, recipe=recipe, data=view, model=b.model(), new_model=b.model,
                        seed=b.cfg.base.seed, device=b.device, mentor=mentor, mentor_cfg=b.cfg.mentor)
    return get_method(method).task(ctx)


def bare_loop(model, x, y, *, optimizer, scheduler, batch_size, generator, amp_dtype, channels_last, device,
              label_smoothing) -> None:
    """The minimal loop a PyTorch user would write for the same work: index, forward, backward, step."""
    model.train()
    perm = torch.randperm(x.shape[0], generator=generator)
    for start in range(0, x.shape[0], batch_size):
        idx = perm[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(xb), yb, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(model, optimizer, xb, yb, amp_dtype, device_type, label_smoothing):  # noqa: ANN001, ANN202
    """One step of the bare loop, as a function torch.compile can take whole (forward, backward, optimiser)."""
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = F.cross_entropy(model(xb), yb, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--batches", type=int, default=100, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats of each loop")
    parser.add_argument("--out", default="reports/bench.json")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile loop (a smoke run)")
    args = parser.parse_args(argv)

    cfg = settled(load_config(args.params))
    s, spade_cfg, mix = cfg.train, cfg.student.spade, cfg.student.mentormix
    n = args.batches * s.batch_size
    b = bench_setup(args.params, n)
    threads, device, amp_dtype, channels_last, x, y, source = (b.threads, b.device, b.amp, b.channels_last, b.x,
                                                               b.y, b.source)

    def setup() -> tuple:
        model = b.model()
        opt = engine.make_optimizer(model, s)
        # The schedule spans a long run so the lr stays sane over all repeats.
        sched = engine.make_scheduler(opt, s, steps_per_epoch=args.batches * (args.repeats + 1))
        return model, opt, sched, torch.Generator().manual_seed(cfg.base.seed)

    p_model, p_opt, p_sched, p_gen = setup()
    b_model, b_opt, b_sched, b_gen = setup()
    s_model, s_opt, s_sched, s_gen = setup()
    m_model, m_opt, m_sched, m_gen = setup()
    mentor, mentor_source = bench_mentor(cfg, device)
    spade_task, mix_task = (bench_task(b, method, steps_per_epoch=args.batches, epochs=args.repeats + 1,
                                       mentor=mentor) for method in ("spade", "mentormix"))
    ce_task = engine.Task(label_smoothing=s.label_smoothing)

    def project() -> None:
        engine.train_one_epoch(p_model, x, y, optimizer=p_opt, scheduler=p_sched, batch_size=s.batch_size,
                               device=device, generator=p_gen, task=ce_task, autocast_dtype=amp_dtype,
                               channels_last=channels_last)

    def bare() -> None:
        bare_loop(b_model, x, y, optimizer=b_opt, scheduler=b_sched, batch_size=s.batch_size, generator=b_gen,
                  amp_dtype=amp_dtype, channels_last=channels_last, device=device, label_smoothing=s.label_smoothing)

    # the other bare loops a PyTorch user would try: the other memory format, and torch.compile (its compilation is
    # timed apart: compile_s); the ratio is against the fastest bare loop found
    o_model, o_opt, o_sched, o_gen = setup()
    o_model = o_model.to(memory_format=torch.contiguous_format if channels_last else torch.channels_last)

    def bare_other_format() -> None:
        bare_loop(o_model, x, y, optimizer=o_opt, scheduler=o_sched, batch_size=s.batch_size, generator=o_gen,
                  amp_dtype=amp_dtype, channels_last=not channels_last, device=device,
                  label_smoothing=s.label_smoothing)

    c_model, c_opt, c_sched, c_gen = setup()
    compiled_step = torch.compile(_train_step)

    def bare_compiled() -> None:
        c_model.train()
        perm = torch.randperm(x.shape[0], generator=c_gen)
        for start in range(0, x.shape[0], s.batch_size):
            idx = perm[start : start + s.batch_size]
            xb = x[idx].contiguous(memory_format=torch.channels_last) if channels_last else x[idx]
            compiled_step(c_model, c_opt, xb, y[idx], amp_dtype, device.type, s.label_smoothing)
            c_sched.step()

    def spade() -> None:
        engine.train_one_epoch(s_model, x, y, optimizer=s_opt, scheduler=s_sched, batch_size=s.batch_size,
                               device=device, generator=s_gen, task=spade_task, autocast_dtype=amp_dtype,
                               channels_last=channels_last)

    def mentormix() -> None:
        engine.train_one_epoch(m_model, x, y, optimizer=m_opt, scheduler=m_sched, batch_size=s.batch_size,
                               device=device, generator=m_gen, task=mix_task, autocast_dtype=amp_dtype,
                               channels_last=channels_last)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t0)

    loops = {"project": project, "bare": bare, "bare_other_format": bare_other_format, "bare_compiled": bare_compiled,
             "spade": spade, "mentormix": mentormix}
    if args.no_compile:
        del loops["bare_compiled"]
    first = {name: n / timed(fn) for name, fn in loops.items()}  # warm-up (allocator, oneDNN caches, compilation)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: each loop runs first, ..., last
            rates[name].append(timed(loops[name]))
    fastest = max((k for k in ("bare", "bare_other_format", "bare_compiled") if k in rates),
                  key=lambda name: statistics.median(rates[name]))
    compiled = statistics.median(rates["bare_compiled"]) if "bare_compiled" in rates else float("nan")
    # the compiled loop's first epoch less a compiled epoch's time: the compilation
    compile_s = first.get("bare_compiled", float("nan")) - n / compiled
    ratios = [p / b for p, b in zip(rates["project"], rates[fastest], strict=True)]
    # step time ratio SPADE / CE = (img/s of CE) / (img/s of SPADE), per repeat
    spade_ratios = [c / sp for c, sp in zip(rates["project"], rates["spade"], strict=True)]
    mix_ratios = [c / m for c, m in zip(rates["project"], rates["mentormix"], strict=True)]  # MentorMix / CE
    result = {
        "device": str(device), "threads": threads, "model": s.model, "batch_size": s.batch_size,
        "batches_per_repeat": args.batches, "repeats": args.repeats, "data": source,
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32", "channels_last": channels_last,
        "project_img_s": statistics.median(rates["project"]), "bare_img_s": statistics.median(rates["bare"]),
        "bare_other_format_img_s": statistics.median(rates["bare_other_format"]),
        "bare_compiled_img_s": compiled, "compile_s": compile_s, "fastest_bare": fastest,
        "ratio": statistics.median(ratios), "target_ratio": TARGET,
        "spade_img_s": statistics.median(rates["spade"]), "spade_step_ratio": statistics.median(spade_ratios),
        "spade_target_ratio": SPADE_TARGET, "spade_mentor": mentor_source,
        "spade_sample_weights": spade_cfg.sample_weights,
        "mentormix_img_s": statistics.median(rates["mentormix"]),
        "mentormix_step_ratio": statistics.median(mix_ratios),
        "mentormix_second_reweight": mix.second_reweight, "mentormix_alpha": mix.mixup_alpha,
        "per_repeat": {"project_img_s": rates["project"], "bare_img_s": rates["bare"], "ratio": ratios,
                       "bare_other_format_img_s": rates["bare_other_format"],
                       "bare_compiled_img_s": rates.get("bare_compiled", []),
                       "spade_img_s": rates["spade"], "spade_step_ratio": spade_ratios,
                       "mentormix_img_s": rates["mentormix"], "mentormix_step_ratio": mix_ratios},
    }
    print(f"{s.model} batch {s.batch_size}, {result['precision']}, channels_last={channels_last}, {threads} threads, "
          f"{device}, data: {source}")
    print(f"project loop (train_one_epoch): {result['project_img_s']:8.0f} img/s")
    print(f"bare PyTorch loop:              {result['bare_img_s']:8.0f} img/s")
    print(f"  in the other memory format:   {result['bare_other_format_img_s']:8.0f} img/s")
    print(f"  compiled (torch.compile):     {compiled:8.0f} img/s, plus {compile_s:.1f} s to compile (its first "
          "epoch less the others)")
    verdict = "ok" if result["ratio"] >= TARGET else f"below target {TARGET}"
    print(f"ratio project/fastest bare:     {result['ratio']:8.3f}  ({verdict}; fastest: {fastest}; median of "
          f"{args.repeats} interleaved repeats)")
    print(f"spade loop (mentor {mentor_source}): {result['spade_img_s']:8.0f} img/s")
    verdict = "ok" if result["spade_step_ratio"] <= SPADE_TARGET else f"above target {SPADE_TARGET}"
    print(f"step time spade/ce:             {result['spade_step_ratio']:8.3f}  ({verdict}; median of "
          f"{args.repeats} interleaved repeats)")
    print(f"mentormix loop:                 {result['mentormix_img_s']:8.0f} img/s")
    print(f"step time mentormix/ce:         {result['mentormix_step_ratio']:8.3f}  (median of {args.repeats} "
          f"interleaved repeats; second_reweight={mix.second_reweight})")
    save_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
