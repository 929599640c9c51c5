"""Noise model ``none``: nothing changes (``noise.rate`` is ignored): training sees the data's own labels."""

from __future__ import annotations

import numpy as np

from labelnoise.noise.base import Applied, NoiseInputs, NoiseModel, NoisyLabels, register


def apply(inputs: NoiseInputs) -> Applied:
    # without true labels, how many of the data's own labels are wrong is unknown; where the data labelled the
    # trusted images too (data.truth: false, a trusted file), its labels there are the noisy source's
    given = None if inputs.prepared is None else inputs.prepared.clean_given
    nl = NoisyLabels(inputs.labels.copy(), np.zeros(inputs.labels.shape, dtype=bool), trusted=given)
    return Applied(nl, requested_rate=0.0, rate_known=inputs.truth)


MODEL = register(NoiseModel(name="none", summary="nothing changes: the data's own labels", class_conditional=True,
                            apply=apply, clean=True))
