"""Prints the requirement lines of a requirements file (``-r`` includes followed) whose module this python cannot
find, one per line; nothing when everything is present. Standard library only: it runs before anything is installed.

    python scripts/missing_requirements.py requirements-dev.txt
"""
import importlib.util
import re
import sys
from pathlib import Path
from typing import Iterator, List

# distribution name -> module it provides, where the two differ beyond '-' vs '_'
MODULES = {'pytorch-lightning': 'pytorch_lightning', 'opencv-python': 'cv2', 'opencv-python-headless': 'cv2',
           'universal-pathlib': 'upath', 'pyyaml': 'yaml', 'scikit-learn': 'sklearn'}


def requirement_lines(path: Path) -> Iterator[str]:
    for raw in path.read_text().splitlines():
        line = raw.split('#', 1)[0].strip()
        if not line:
            continue
        if line.startswith(('-r ', '--requirement ')):
            yield from requirement_lines(path.parent / line.split(None, 1)[1])
        elif not line.startswith('-'):
            yield line


def module_of(requirement: str) -> str:
    name = re.split(r'[\s\[<>=!~;@]', requirement, maxsplit=1)[0].lower()
    return MODULES.get(name, name.replace('-', '_'))


def missing(path: Path) -> List[str]:
    return [line for line in requirement_lines(path) if importlib.util.find_spec(module_of(line)) is None]


if __name__ == '__main__':
    for requirement in missing(Path(sys.argv[1])):
        print(requirement)
