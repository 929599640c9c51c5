"""The benchmark suite (`make bench`): every figure a ratio or a measurement taken in this one run, printed
as a table and written to reports/bench.json.

- project loop ÷ bare PyTorch loop, SPADE step ÷ CE step, MentorMix step ÷ CE step: ``throughput.py``
  (interleaved repeats, medians);
- 2-process DDP throughput ÷ 1 process on the same cores: ``ddp_throughput.py`` once with one process (all
  cores as threads) and once under ``torchrun --nproc_per_node 2`` (the cores shared out, one per rank);
- no-op `dvc repro`: seconds of a second `dvc repro` in a throw-away tiny-preset project (nothing to run:
  DVC hashes the dependencies and checks every stage);
- peak resident memory of `cli.py train-student` (one epoch, the default params: full Fashion-MNIST, SPADE)
  in a throw-away folder, the process's maximum RSS as the kernel reports it (wait4);
- the default pipeline's cost, network by network, its wall-clock time and its reuse ratio: ``pipeline_cost.py``
  (`dvc repro` in a throw-away copy; with ``--quick`` the tiny preset).

    python benchmarks/suite.py                    # make bench
    python benchmarks/suite.py --quick            # fewer steps (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import pipeline_cost, throughput  # noqa: E402
from labelnoise.io import save_json  # noqa: E402
from labelnoise.scaffold import clean_env, sh, tiny_project  # noqa: E402

TARGETS = {"project_over_bare": (">=", 0.95), "spade_over_ce_step": ("<=", 1.15),
           "mentormix_over_ce_step": ("<=", 2.2), "train_student_peak_rss_gib": ("<=", 2.0)}


def ddp_ratio(batches: int, repeats: int, rounds: int) -> dict[str, float]:
    """Median img/s of ``rounds`` alternating launches each: 1 process, then 2 torchrun ranks."""
    import statistics

    script = [str(ROOT / "benchmarks" / "ddp_throughput.py"), "--batches", str(batches), "--repeats", str(repeats)]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rates: dict[str, list[float]] = {"one": [], "two": []}
    for _ in range(rounds):
        for name, cmd in (("one", [sys.executable, *script]),
                          ("two", [torchrun, "--standalone", "--nproc_per_node", "2", *script])):
            out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
            rates[name].append(json.loads(out.stdout.strip().splitlines()[-1])["img_s"])
    one, two = statistics.median(rates["one"]), statistics.median(rates["two"])
    return {"ddp1_img_s": one, "ddp2_img_s": two, "ddp2_over_ddp1": two / one}


def noop_repro_seconds() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = tiny_project(Path(tmp))  # includes the first, real `dvc repro`
        t0 = time.perf_counter()
        out = sh(["dvc", "repro"], Path(tmp), env)
        seconds = time.perf_counter() - t0
        if "didn't change, skipping" not in out.stdout + out.stderr:
            raise RuntimeError(f"the second dvc repro was not a no-op:\n{out.stdout[-2000:]}")
        return seconds


def peak_rss_gib(epochs: int) -> float:
    """Max RSS of `cli.py train-student` on the default params (its inputs made first in the same folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**clean_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        fast_mentor = ["-S", "mentor.kind=pd", "-S", "mentor.fit_steps=50", "-S", "mentor.grid_size=1000"]
        for stage, extra in (("download", []), ("inject-noise", []), ("pretrain-mentor", fast_mentor),
                             ("train-student", ["-S", f"train.epochs={epochs}", *fast_mentor])):
            log = Path(tmp) / f"{stage}.log"  # a file, not a pipe: wait4 must not wait on a full pipe
            with open(log, "w") as err:
                proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), stage, "--params",
                                         str(ROOT / "params.yaml"), *extra], cwd=tmp, env=env,
                                        stdout=subprocess.DEVNULL, stderr=err)
                _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"{stage} failed: {log.read_text().strip().splitlines()[-1:]}")
        return usage.ru_maxrss * 1024 / 2**30  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t = throughput.main(["--batches", "20" if args.quick else "100", "--repeats", "2" if args.quick else "7",
                             "--out", str(Path(tmp) / "throughput.json")])
    results = {"project_over_bare": t["ratio"], "spade_over_ce_step": t["spade_step_ratio"],
               "mentormix_over_ce_step": t["mentormix_step_ratio"]}
    results |= ddp_ratio(20 if args.quick else 80, 1 if args.quick else 3, 1 if args.quick else 3)
    results["noop_dvc_repro_s"] = noop_repro_seconds()
    results["train_student_peak_rss_gib"] = peak_rss_gib(1)
    with tempfile.TemporaryDirectory() as tmp:
        cost = pipeline_cost.main(["--out", str(Path(tmp) / "cost.json"), *(["--preset", "tiny"] if args.quick
                                                                           else [])])
    results |= {"pipeline_minutes": cost["dvc_repro_s"] / 60, "pipeline_images_trained": cost["images_trained"],
                "pipeline_reuse_ratio": cost["reuse_ratio"],
                "pipeline_images_vs_before": cost["images_vs_before"] or float("nan")}
    rows = [("project loop / bare loop", "project_over_bare"), ("SPADE step / CE step", "spade_over_ce_step"),
            ("MentorMix step / CE step", "mentormix_over_ce_step"), ("2-process DDP / 1 process", "ddp2_over_ddp1"),
            ("no-op dvc repro (s)", "noop_dvc_repro_s"),
            ("train_student peak RSS (GiB)", "train_student_peak_rss_gib"),
            ("pipeline: dvc repro (min)", "pipeline_minutes"), ("pipeline: images trained", "pipeline_images_trained"),
            ("pipeline: reuse ratio", "pipeline_reuse_ratio"),
            ("pipeline: images / before", "pipeline_images_vs_before")]
    print(f"\n{'measure':32} {'value':>9}  target")
    for label, key in rows:
        op, bound = TARGETS.get(key, ("", None))
        verdict = "" if bound is None else f"{op} {bound}  " + (
            "ok" if (results[key] >= bound if op == ">=" else results[key] <= bound) else "MISSED")
        print(f"{label:32} {results[key]:9.3f}  {verdict}")
    report = {**results, "targets": {k: f"{op} {b}" for k, (op, b) in TARGETS.items()}, "throughput": t,
              "pipeline_cost": cost,
              "cpu_count": os.cpu_count(), "quick": args.quick}
    save_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
