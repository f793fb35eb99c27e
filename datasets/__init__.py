"""Data layer: dataset adapters -> scenario record -> QCNet features -> on-disk cache -> Dataset / DataModule.

Attributes are imported on first use, so ``python -m datasets.<module>`` and the scripts' ``--help`` do not import
every submodule (nor torch) first."""
from utils.lazy_exports import lazy_exports

_EXPORTS = {
    'scenario': ('AGENT_CATEGORIES', 'AGENT_TYPES', 'DATASET_IDS', 'POINT_SIDES', 'POINT_TYPES',
                 'POLYGON_IS_INTERSECTIONS', 'POLYGON_KINDS', 'POLYGON_TO_POLYGON_TYPES', 'POLYGON_TYPES',
                 'AgentTracks', 'MapRecord', 'Polylines', 'ScenarioError', 'ScenarioRecord', 'TimeBase'),
    'argoverse_v2': ('list_argoverse_v2_scenarios', 'load_argoverse_v2_scenario'),
    'processing': ('build_qcnet_features', 'process_scenario', 'to_hetero_data'),
    'storage': ('CACHE_SUFFIX', 'FORMAT_VERSION', 'CacheError', 'CacheVersionError', 'UnwritableDirectoryError',
                'load_features', 'read_header', 'save_features'),
    'preprocess': ('PreprocessSummary', 'PreprocessWorkerDied', 'ProcessingOptions', 'preprocess_scenarios'),
    'argoverse_v2_dataset': ('ArgoverseV2Dataset',),
    'argoverse_v1_dataset': ('ArgoverseV1Dataset',),
    'waymo_dataset': ('WaymoDataset',),
    'datamodule': ('ArgoverseV2DataModule', 'SizeCappedBatchSampler'),
    'waymo': ('list_waymo_scenarios', 'load_waymo_scenario', 'read_waymo_tfrecord'),
    'argoverse_v1': ('list_argoverse_v1_scenarios', 'load_argoverse_v1_scenario'),
    'multi_dataset': ('DatasetSource', 'MultiDataset', 'MultiDatasetDataModule', 'WeightedDatasetSampler'),
    'input_errors': ('DATA_INPUT_ERRORS',),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__ = lazy_exports(__name__, _EXPORTS)
