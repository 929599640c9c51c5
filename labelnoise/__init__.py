"""labelnoise: training deep networks on noisy labels (MentorNet, joint optimization, MentorMix)."""

from __future__ import annotations


def _version() -> str:
    """The installed package's version, or, in a checkout that is not installed, its pyproject.toml's."""
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():  # a checkout (installed editable or not): its own file is the one truth
        import tomllib

        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    try:
        return version("labelnoise")
    except PackageNotFoundError:
        return "unknown"


__version__ = _version()

# the entry points, each imported from its module on first use (importing labelnoise is light)
_API = {"export": "api", "find_label_issues": "api", "predict": "api", "fit": "fitting"}


def __getattr__(name: str) -> object:
    if name in _API:
        from importlib import import_module

        return getattr(import_module(f"labelnoise.{_API[name]}"), name)
    raise AttributeError(f"module 'labelnoise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
