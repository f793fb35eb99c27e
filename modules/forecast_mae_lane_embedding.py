"""Lane tokens of the Forecast-MAE-style backbone: the points of each map polygon, in its own frame, -> one token."""
import torch
import torch.nn as nn

from modules.forecast_mae_frames import rotate
from utils.weight_init import weight_init

NUM_POINT_FEATURES = 5  # offset from the polygon (2), orientation relative to the polygon (cos, sin), segment length


def _scatter_max(values: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Max over the rows of ``values`` [N, D] that share ``index`` long[N] -> [num_groups, D] (0 for empty groups)."""
    out = values.new_zeros(num_groups, values.size(-1))
    return out.scatter_reduce(0, index.unsqueeze(-1).expand_as(values), values, reduce='amax', include_self=False)


class ForecastMAELaneEmbedding(nn.Module):
    """PointNet over the points of every map polygon (the two-stage max-pooling of Forecast-MAE's lane encoder).

    Each point is described in its polygon's frame (origin = ``map_polygon.position``, x axis =
    ``map_polygon.orientation``) by its offset (m), its orientation (cos, sin) and its segment length, plus point-type
    and side embeddings. Per-point MLP -> max over the polygon -> concatenated back to every point -> MLP -> max; then
    polygon-type and intersection embeddings. Runs on the flat point list (no padding).
    """

    def __init__(self, hidden_dim: int, num_point_types: int, num_point_sides: int, num_polygon_types: int,
                 num_intersection_flags: int) -> None:
        super().__init__()
        self.point_mlp = nn.Sequential(nn.Linear(NUM_POINT_FEATURES, hidden_dim), nn.LayerNorm(hidden_dim),
                                       nn.ReLU(inplace=True), nn.Linear(hidden_dim, hidden_dim))
        self.type_pt_emb = nn.Embedding(num_point_types, hidden_dim)
        self.side_pt_emb = nn.Embedding(num_point_sides, hidden_dim)
        self.fuse_mlp = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim),
                                      nn.ReLU(inplace=True), nn.Linear(hidden_dim, hidden_dim))
        self.type_pl_emb = nn.Embedding(num_polygon_types, hidden_dim)
        self.int_pl_emb = nn.Embedding(num_intersection_flags, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.apply(weight_init)

    def forward(self, point_position: torch.Tensor, point_orientation: torch.Tensor, point_magnitude: torch.Tensor,
                point_type: torch.Tensor, point_side: torch.Tensor, point_polygon: torch.Tensor,
                polygon_position: torch.Tensor, polygon_orientation: torch.Tensor, polygon_type: torch.Tensor,
                polygon_intersection: torch.Tensor) -> torch.Tensor:
        """Points: position [N, 2] (map frame), orientation / magnitude [N], type / side long[N], polygon long[N];
        polygons: position [P, 2], orientation [P], type / intersection long[P]. Returns [P, hidden_dim]."""
        num_polygons = polygon_position.size(0)
        frame = polygon_orientation[point_polygon]
        offset = rotate(point_position - polygon_position[point_polygon], frame.cos(), frame.sin())
        relative = point_orientation - frame
        features = torch.cat([offset, relative.cos().unsqueeze(-1), relative.sin().unsqueeze(-1),
                              point_magnitude.unsqueeze(-1)], dim=-1)
        h = self.point_mlp(features) + self.type_pt_emb(point_type) + self.side_pt_emb(point_side)
        pooled = _scatter_max(h, point_polygon, num_polygons)
        h = self.fuse_mlp(torch.cat([h, pooled[point_polygon]], dim=-1))
        x = _scatter_max(h, point_polygon, num_polygons)
        return self.norm(x + self.type_pl_emb(polygon_type) + self.int_pl_emb(polygon_intersection))
