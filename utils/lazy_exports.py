"""Package attributes imported on first use (PEP 562), so that importing one light submodule of a package (e.g.
``utils.cli`` for a script's ``--help``) does not import torch through the package's ``__init__``."""
import importlib
from typing import Any, Callable, Dict, Iterable


def lazy_exports(package: str, exports: Dict[str, Iterable[str]]) -> Callable[[str], Any]:
    """``__getattr__`` for ``package``: ``exports`` maps a submodule (relative name) to the attributes it provides."""
    owner = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in owner:
            raise AttributeError(f'module {package!r} has no attribute {name!r}')
        value = getattr(importlib.import_module(f'{package}.{owner[name]}'), name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # later look-ups skip __getattr__
        return value

    return __getattr__
