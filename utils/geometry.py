"""Planar/3-D geometry helpers shared by the backbone (angles are in radians)."""
import math

import torch


def wrap_angle(angle: torch.Tensor, min_val: float = -math.pi, max_val: float = math.pi) -> torch.Tensor:
    """Maps angles into [min_val, max_val) (default [-pi, pi)); any shape, elementwise."""
    return min_val + (angle + max_val) % (max_val - min_val)


def angle_between_2d_vectors(ctr_vector: torch.Tensor, nbr_vector: torch.Tensor) -> torch.Tensor:
    """Signed angle from ``ctr_vector`` to ``nbr_vector`` (both [..., >=2], only x/y used), in (-pi, pi].

    Positive when ``nbr_vector`` lies counter-clockwise of ``ctr_vector``; shape [...].
    """
    cross = ctr_vector[..., 0] * nbr_vector[..., 1] - ctr_vector[..., 1] * nbr_vector[..., 0]
    dot = (ctr_vector[..., :2] * nbr_vector[..., :2]).sum(dim=-1)
    return torch.atan2(cross, dot)


def angle_between_3d_vectors(ctr_vector: torch.Tensor, nbr_vector: torch.Tensor) -> torch.Tensor:
    """Unsigned angle in [0, pi] between two [..., 3] vectors; shape [...]."""
    cross_norm = torch.linalg.vector_norm(torch.cross(ctr_vector, nbr_vector, dim=-1), dim=-1)
    return torch.atan2(cross_norm, (ctr_vector * nbr_vector).sum(dim=-1))


def side_to_directed_lineseg(query_point: torch.Tensor, start_point: torch.Tensor, end_point: torch.Tensor) -> str:
    """'LEFT', 'RIGHT' or 'CENTER': side of ``query_point`` w.r.t. the directed segment start -> end (x/y only)."""
    cond = ((end_point[0] - start_point[0]) * (query_point[1] - start_point[1]) -
            (end_point[1] - start_point[1]) * (query_point[0] - start_point[0]))
    if cond > 0:
        return 'LEFT'
    if cond < 0:
        return 'RIGHT'
    return 'CENTER'
