"""Argoverse 1 motion-forecasting dataset: the samples of ``datasets/argoverse_v1.py`` on the common canvas."""
from datasets.argoverse_v2_dataset import ArgoverseV2Dataset


class ArgoverseV1Dataset(ArgoverseV2Dataset):
    """Argoverse 1 samples on the common canvas (steps 30..79, ``datasets/argoverse_v1.py``). Raw dir:
    ``<sequence>.csv`` files; the city maps are found in ``map_files/`` next to the raw dir or up to two levels
    above it (or ``$ARGOVERSE_V1_MAP_DIR``). Same arguments, layout and cache as :class:`ArgoverseV2Dataset`."""

    dataset_name = 'argoverse_v1'
