"""Golden noisy labels: stage inject_noise on a fixed dataset gives, for every noise kind and seed, the labels, mask,
images and index recorded here (a sha256 of their bytes). Recorded before the noise models became plug-ins
(labelnoise/noise/, with the params of the layout then: noise.delta, noise.massive_source: other and
noise.open_set_source, ...), so a refactor that changes one random draw, or the order of two, fails here."""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

from labelnoise import noise, reference, tracking

REPO = Path(__file__).resolve().parent.parent
COUNTS = [40, 33, 7, 50, 11, 25, 1, 64, 18, 29]  # uneven, so rounding differs by class; class 6 has one example
MATRIX = (np.full((10, 10), 0.03) + np.diag(np.full(10, 0.7))).tolist()  # rows sum to 1


def prepared(dataset: str = "digits", shape: tuple[int, int, int] = (1, 8, 8)):
    """A fixed Prepared of 10 classes (COUNTS train examples each, then 5 clean and 3 test per class)."""
    from labelnoise.datasets import Prepared

    rng = np.random.default_rng(2024)
    labels = rng.permutation(np.repeat(np.arange(10), [n + 8 for n in COUNTS])).astype(np.int64)
    parts = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
    clean = np.sort(np.concatenate([part[:5] for part in parts]))
    test = np.sort(np.concatenate([part[5:8] for part in parts]))
    train = np.setdiff1d(np.arange(labels.size), np.concatenate([clean, test]))
    images = rng.integers(0, 256, size=(labels.size, *shape), dtype=np.uint8)
    return Prepared(images=images, labels=labels, train_idx=train, clean_idx=clean, val_idx=np.zeros(0, dtype=np.int64),
                    test_idx=test, classes=[f"c{i}" for i in range(10)], dataset=dataset)


# case -> the noise section's keys besides seed (kind: the case's name unless given)
CASES: dict[str, dict] = {
    "none": {"rate": 0.4},
    "symmetric": {"rate": 0.45},
    "pair": {"rate": 0.3},
    "asymmetric": {"rate": 0.5, "asymmetric": {"class_map": "auto"}},  # digits: MNIST's shipped map
    "transition": {"transition": {"matrix": MATRIX}},
    "structured": {"rate": 0.5, "structured": {"delta": 0.6}},
    "instance": {"rate": 0.4},  # the reference classifier's probabilities are fixed (fake_reference)
    "open_set": {"rate": 0.3, "open_set": {"source": "auto"}},  # digits: white noise
    "open_set_digits": {"kind": "open_set", "rate": 0.25, "open_set": {"source": "auto"}},  # fashion_mnist: digits
    "massive": {"massive": {"alpha": 2.0, "n_clean": 40, "source": "train"}},
    "massive_other": {"kind": "massive", "massive": {"alpha": 1.5, "n_clean": 30, "source": "white_noise"}},
    "given": {"given": {"file": "given.npy", "key": ""}},
}

GOLDEN: dict[tuple[str, int], str] = {  # (case, noise.seed) -> digest, recorded at commit 71873b8 (before the registry)
    ("none", 1): "db213927c228006c",
    ("none", 7): "db213927c228006c",
    ("symmetric", 1): "f33fd1f9b9b6177c",
    ("symmetric", 7): "6519f04796d4b460",
    ("pair", 1): "0760c7445fbb4faf",
    ("pair", 7): "93aed87c58c10cbd",
    ("asymmetric", 1): "0d60b5cd2db61f3d",
    ("asymmetric", 7): "6a296657eafd083a",
    ("transition", 1): "d0d7b8bd51e24404",
    ("transition", 7): "33a3cd32d0a2f62f",
    ("structured", 1): "676d69575bc67a12",
    ("structured", 7): "f71b8506b1b6c789",
    ("instance", 1): "4ec14806b56a612c",
    ("instance", 7): "4ec14806b56a612c",
    ("open_set", 1): "969e71385f2064f2",
    ("open_set", 7): "311c7baead5eea96",
    ("open_set_digits", 1): "0a705b104e651aef",
    ("open_set_digits", 7): "6eefa1bb393f106e",
    ("massive", 1): "92c346b62e70f84f",
    ("massive", 7): "c6a473dfb1fbc5c3",
    ("massive_other", 1): "a4c888a5bec29b6e",
    ("massive_other", 7): "c80108843d58fb49",
    ("given", 1): "21bcbbd97824487b",
    ("given", 7): "21bcbbd97824487b",
}


def digest(nl: noise.NoisyLabels) -> str:
    h = hashlib.sha256()
    for name in ("labels", "mask", "images", "index"):
        a = getattr(nl, name)
        h.update(name.encode() + (b"-" if a is None else str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()))
    return h.hexdigest()[:16]


def fake_reference(x_fit, y_fit, x_score, **kw) -> np.ndarray:
    """Fixed (n, K) probabilities in place of the trained reference classifier (its training is tested elsewhere)."""
    return np.random.default_rng(5).dirichlet(np.full(10, 0.3), size=len(x_score))


@pytest.mark.parametrize("seed", [1, 7])
@pytest.mark.parametrize("case", list(CASES))
def test_inject_noise_gives_the_recorded_labels(tmp_path, monkeypatch, case: str, seed: int) -> None:
    from labelnoise.config import from_dict, merge, read_yaml
    from labelnoise.datasets import save_prepared
    from stages import inject_noise
    from stages.common import PATHS

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "stage_run", lambda *a, **k: nullcontext(tracking.NullRun()))  # no store needed
    monkeypatch.setattr(reference, "reference_probabilities", fake_reference)
    params = {"kind": case, **CASES[case], "seed": seed}
    p = prepared("fashion_mnist", (1, 28, 28)) if case == "open_set_digits" else prepared()
    np.save(tmp_path / "given.npy", np.random.default_rng(3).integers(0, 10, size=len(p.labels)))
    save_prepared(PATHS.prepared, p)
    cfg = from_dict(merge(read_yaml(REPO / "params.yaml"), {"base": {"threads": 1}, "noise": params}))
    inject_noise.run(cfg)
    assert digest(noise.load_noisy(PATHS.noisy)) == GOLDEN[(case, seed)]
