"""Method ``ce``: plain cross-entropy on the noisy labels, the baseline every other method must beat.

The engine's base :class:`~labelnoise.engine.Task` is exactly this loss (with ``student.label_smoothing``).
"""

from __future__ import annotations

from labelnoise.engine import Task
from labelnoise.methods.base import Method, MethodContext, register


def _task(ctx: MethodContext) -> Task:
    return Task(label_smoothing=ctx.recipe.label_smoothing)


METHOD = register(Method(
    name="ce", order=0, display="CE", summary="mean cross-entropy on the noisy labels (the baseline)",
    task=_task,
))
