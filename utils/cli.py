"""Small helpers shared by the command-line scripts (train.py, val.py, test.py)."""
import argparse
from typing import Union

from pytorch_lightning.strategies import DDPStrategy, Strategy


def str2bool(value: str) -> bool:
    """argparse type for the official `type=bool` flags, where bool('False') would silently be True."""
    lowered = str(value).strip().lower()
    if lowered in ('1', 'true', 't', 'yes', 'y'):
        return True
    if lowered in ('0', 'false', 'f', 'no', 'n'):
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean (true/false/1/0), got {value!r}')


def training_strategy(devices: int, num_nodes: int = 1) -> Union[str, Strategy]:
    """DDP (as the official scripts) only when more than one process trains; a single device needs none."""
    if devices * num_nodes > 1:
        return DDPStrategy(find_unused_parameters=False, gradient_as_bucket_view=True)
    return 'auto'


def evaluation_strategy(devices: int, num_nodes: int = 1) -> str:
    return 'ddp' if devices * num_nodes > 1 else 'auto'


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f'expected an integer >= 1, got {value!r}')
    return number


def int_or_float(value: str) -> Union[int, float]:
    """Lightning's limit_*_batches convention: an int counts batches, a float is a fraction of the data."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a batch count (int) or a fraction (float), got {value!r}')
