"""What the default pipeline costs, network by network, on this machine: `dvc repro` of the params as they are (or a
preset) in a throw-away copy of the project, with every fit writing a line to a ledger (``LABELNOISE_LEDGER``,
:func:`labelnoise.runtime.ledger`). Prints one row per network (stage, what it is for, images per epoch x epochs,
seconds, images/s, precision), the networks a stage reused instead of training (what they would have cost), the
pipeline's wall-clock time, and the reuse ratio: the images trained ÷ the images trained plus those reused.

    python benchmarks/pipeline_cost.py                      # the default pipeline (make bench runs it)
    python benchmarks/pipeline_cost.py --preset tiny        # a smoke run
    LABELNOISE_CPU_BF16=0 python benchmarks/pipeline_cost.py   # fp32 on a CPU with native bf16 (what one without
                                                               # runs; not its speed)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labelnoise.io import save_json  # noqa: E402
from labelnoise.runtime import LEDGER_ENV  # noqa: E402
from labelnoise.scaffold import project, sh  # noqa: E402

# What the default pipeline trained before networks were shared and its phases shortened (measured with the ledger,
# params of 2026-12-01): 2 fold networks 27,500 x 15, the check's 2 trusted-only networks 2,500 x 60, the DD
# mentor's student 5,000 x 15, the student 60,000 x 15, label correction's trusted teacher 5,000 x 60 and its
# fresh network 60,000 x 18. The ratio below compares today's default with it (a preset: no comparison).
BEFORE_IMAGES = 2 * 27_500 * 15 + 2 * 2_500 * 60 + 5_000 * 15 + 60_000 * 15 + 5_000 * 60 + 60_000 * 18


def cost_table(ledger: list[dict]) -> list[dict]:
    """The ledger's rows: the trained networks, then the reused ones."""
    return sorted(ledger, key=lambda r: bool(r.get("reused")))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="a preset to apply first (default: params.yaml as it is)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "pipeline_cost.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root, ledger_path = Path(tmp) / "project", Path(tmp) / "ledger.jsonl"
        root.mkdir()
        env = project(root, preset=args.preset, repro=False, extra={LEDGER_ENV: str(ledger_path)})
        t0 = time.perf_counter()
        sh(["dvc", "repro"], root, env, timeout=4 * 3600)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in ledger_path.read_text().splitlines()] if ledger_path.exists() else []
        metrics = json.loads((root / "reports" / "metrics.json").read_text())
    trained = sum(r["images"] for r in rows if not r.get("reused"))
    reused = sum(r["images"] for r in rows if r.get("reused"))
    print(f"\n{'stage':16} {'network':36} {'images x epochs':>18} {'seconds':>8} {'img/s':>7}  precision")
    for r in cost_table(rows):
        shape = f"{r['images_per_epoch']:,} x {r['epochs']}"
        if r.get("reused"):
            print(f"{r['stage']:16} {r['network'][:36]:36} {shape:>18} {'reused':>8} {'':>7}  (not trained)")
            continue
        rate = r["images"] / r["seconds"] if r["seconds"] else float("nan")
        print(f"{r['stage']:16} {r['network'][:36]:36} {shape:>18} {r['seconds']:8.1f} {rate:7.0f}  {r['precision']}")
    print(f"\ntrained {trained:,} images; reused networks worth {reused:,}; reuse ratio (trained / (trained + "
          f"reused)) {trained / max(trained + reused, 1):.3f}; dvc repro {wall / 60:.1f} min")
    versus_before = None if args.preset else trained / BEFORE_IMAGES
    if versus_before is not None:
        print(f"images trained / the default pipeline's before sharing ({BEFORE_IMAGES:,}): {versus_before:.3f}")
    print(f"the run's test accuracy: student {metrics['test_acc']:.4f}, label-corrected "
          f"{metrics['corrected_test_acc']:.4f}")
    result = {"networks": rows, "images_trained": trained, "images_reused": reused, "metrics": metrics,
              "reuse_ratio": trained / max(trained + reused, 1), "images_vs_before": versus_before,
              "dvc_repro_s": wall, "preset": args.preset}
    save_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
