"""Flags of a pre-training dataset mix (``datasets/multi_dataset.py``), defined without importing torch so that
train_ssl.py answers ``--help`` quickly."""
from typing import Any


def add_mix_arguments(group: Any) -> None:
    """Flags of the dataset mix (``--load_av1`` / ``--load_waymo`` themselves belong to the script)."""
    group.add_argument('--av1_root', type=str, default=None,
                       help='Argoverse 1 root: <root>/train/raw/*.csv (+ val/), city maps in map_files/ next to the '
                            'CSVs or under <root>/map_files')
    group.add_argument('--waymo_root', type=str, default=None,
                       help='Waymo Open Motion root: <root>/train/raw/*.tfrecord* (+ val/)')
    for name in ('av1', 'waymo'):
        for split in ('train', 'val'):
            group.add_argument(f'--{name}_{split}_raw_dir', type=str, default=None)
            group.add_argument(f'--{name}_{split}_processed_dir', type=str, default=None)
    group.add_argument('--dataset_weights', type=float, nargs='+', default=None, metavar='W',
                       help='sampling weights of the mixed datasets in the order AV2, AV1 (if loaded), Waymo (if '
                            'loaded); default: in proportion to their sizes')
    group.add_argument('--num_samples_per_epoch', type=int, default=None,
                       help='scenarios drawn per epoch with --dataset_weights (default: all datasets\' total size)')
