"""Scaling study: how the benefit of SmartPretrain pre-training grows with the amount of pre-training data.

The command line of ``benchmarks/scaling/`` (``python benchmarks/scaling_sweep.py --help``; protocol in
docs/SCALING.md).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.scaling.cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
