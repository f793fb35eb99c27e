
from utils.submission import check_coverage, write_submission
from utils.geometry import angle_between_2d_vectors, angle_between_3d_vectors, side_to_directed_lineseg, wrap_angle
from utils.graph import (bipartite_dense_to_sparse, merge_edges, radius, radius_graph, subgraph_by_mask,
                         torch_cluster_available)
from utils.weight_init import weight_init
from utils.checkpoint import (CheckpointError, CheckpointMismatchError, check_state_dict, load_module_from_checkpoint,
                              load_submodule_weights, read_checkpoint, read_spec_tsv)
