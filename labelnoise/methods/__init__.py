"""Training methods as plug-ins: one file per method, each registering a :class:`Method` (its facts and its engine
task or training procedure). Every module of this package not starting with ``_`` (and not ``base``) is imported
here, so a new method is one new file.

    from labelnoise.methods import get_method
    get_method("spade").uses_mentor   # True
"""

import importlib
import pkgutil

from labelnoise.methods.base import (
    Method,
    MethodContext,
    MethodResult,
    display_name,
    get_method,
    label_scores,
    method_names,
    register,
    registered,
    table_names,
    unregister,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "MethodContext", "MethodResult", "display_name", "get_method", "label_scores", "method_names",
           "register", "registered", "table_names", "unregister"]
