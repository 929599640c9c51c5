"""Label-noise models as plug-ins: one file per model (its name is the value of ``noise.kind``), each registering a
:class:`NoiseModel` (its facts, its params block ``noise.<kind>`` and its checks, and the function that applies it).
Every module of this package but ``base`` and ``pipeline`` is imported here, so a new model is one new file.

    from labelnoise.noise import get_noise
    get_noise("pair").class_conditional   # True

Arrays in, labels (and mask) out: this package imports no training code. A model that trains a classifier
(``instance``) is handed one (:class:`Classifier`, ``labelnoise.reference.trainer``).
"""

import importlib
import pkgutil

from labelnoise.noise.base import (
    RENAMED,
    Applied,
    CheckContext,
    Classifier,
    NoiseInputs,
    NoiseModel,
    NoisyLabels,
    block,
    by_class,
    check_config,
    corrupt,
    get_noise,
    is_clean,
    largest_remainder,
    level_name,
    load_noisy,
    n_to_change,
    noise_config_type,
    noise_names,
    per_class_rate,
    realised_transition,
    register,
    registered,
    save_noisy,
    unregister,
)
from labelnoise.noise.pipeline import Figure, Injection, inject

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in ("base", "pipeline"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["RENAMED", "Applied", "CheckContext", "Classifier", "Figure", "Injection", "NoiseInputs", "NoiseModel",
           "NoisyLabels", "block", "by_class", "check_config", "corrupt", "get_noise", "inject", "is_clean",
           "largest_remainder", "level_name", "load_noisy", "n_to_change", "noise_config_type", "noise_names",
           "per_class_rate", "realised_transition", "register", "registered", "save_noisy", "unregister"]
