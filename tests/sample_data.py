"""Paths of the real sample data kept under tests/data (see tests/data/README.md for what each file holds)."""
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / 'data'
AV2_DIR = DATA_DIR / 'av2'
AV2_TRAIN_DIR = AV2_DIR / 'train'
WOMD_FILE = DATA_DIR / 'womd' / 'motion_data_one_scenario.tfrecord'
SPEC_DIR = DATA_DIR / 'spec'
