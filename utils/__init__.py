"""Shared utilities. Attributes are imported on first use: ``utils.cli`` and ``utils.atomic_io`` import no torch."""
from utils.lazy_exports import lazy_exports

_EXPORTS = {
    'submission': ('check_coverage', 'write_submission'),
    'geometry': ('angle_between_2d_vectors', 'angle_between_3d_vectors', 'side_to_directed_lineseg', 'wrap_angle'),
    'graph': ('bipartite_dense_to_sparse', 'merge_edges', 'radius', 'radius_graph', 'subgraph_by_mask',
              'torch_cluster_available'),
    'weight_init': ('weight_init',),
    'checkpoint': ('CheckpointError', 'CheckpointMismatchError', 'check_state_dict', 'load_module_from_checkpoint',
                   'load_submodule_weights', 'read_checkpoint', 'read_spec_tsv'),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__ = lazy_exports(__name__, _EXPORTS)
