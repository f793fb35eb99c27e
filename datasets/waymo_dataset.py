"""Waymo Open Motion dataset: the samples of ``datasets/waymo.py`` on the common 50 + 60 step canvas."""
from datasets.argoverse_v2_dataset import ArgoverseV2Dataset


class WaymoDataset(ArgoverseV2Dataset):
    """Waymo Open Motion samples on the common 50 + 60 step canvas (``datasets/waymo.py``). Raw dir: .tfrecord files
    (many scenarios each); cache files are named ``<file>#<record index>.qcs``. Same arguments, layout and cache as
    :class:`ArgoverseV2Dataset`."""

    dataset_name = 'waymo'
