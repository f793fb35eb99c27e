"""Data layer: dataset adapters -> scenario record -> QCNet features -> on-disk cache -> Dataset / DataModule."""
from datasets.scenario import (AGENT_CATEGORIES, AGENT_TYPES, DATASET_IDS, POINT_SIDES, POINT_TYPES,
                               POLYGON_IS_INTERSECTIONS, POLYGON_KINDS, POLYGON_TO_POLYGON_TYPES, POLYGON_TYPES,
                               AgentTracks, MapRecord, Polylines, ScenarioError, ScenarioRecord, TimeBase)
from datasets.argoverse_v2 import list_argoverse_v2_scenarios, load_argoverse_v2_scenario
from datasets.processing import build_qcnet_features, process_scenario, to_hetero_data
from datasets.storage import (CACHE_SUFFIX, FORMAT_VERSION, CacheError, CacheVersionError, UnwritableDirectoryError,
                              load_features, read_header, save_features)
from datasets.preprocess import PreprocessSummary, PreprocessWorkerDied, ProcessingOptions, preprocess_scenarios
from datasets.argoverse_v2_dataset import ArgoverseV2Dataset
from datasets.datamodule import ArgoverseV2DataModule, SizeCappedBatchSampler
from datasets.waymo import list_waymo_scenarios, load_waymo_scenario, read_waymo_tfrecord
from datasets.argoverse_v1 import list_argoverse_v1_scenarios, load_argoverse_v1_scenario
from datasets.argoverse_v1_dataset import ArgoverseV1Dataset
from datasets.waymo_dataset import WaymoDataset
from datasets.multi_dataset import DatasetSource, MultiDataset, MultiDatasetDataModule, WeightedDatasetSampler

# What missing or bad data raises while a dataset is built (processing included): the scripts report these as one
# line naming the file and the problem, anything else keeps its traceback.
DATA_INPUT_ERRORS = (CacheError, ScenarioError, FileNotFoundError, UnwritableDirectoryError, PreprocessWorkerDied)
