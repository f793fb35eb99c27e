"""A smaller real scene: a processed sample cut down to what lies near the AV (CPU tests and smoke benchmarks)."""
from torch_geometric.data import HeteroData
import torch


def crop_scene(data: HeteroData, radius: float, current_step: int = 49) -> HeteroData:
    """The agents observed at ``current_step`` and the map polygons (with their points) within ``radius`` metres of
    the AV's position at that step (scene frame); agent ids and ``av_index`` follow the kept agents."""
    agent = data['agent']
    av = int(agent['av_index'])
    center = agent['position'][av, current_step, :2]
    near = (agent['position'][:, current_step, :2] - center).norm(dim=-1) < radius
    keep_agents = (near & agent['valid_mask'][:, current_step]).nonzero().squeeze(1)
    keep_polygons = ((data['map_polygon']['position'][:, :2] - center).norm(dim=-1) < radius).nonzero().squeeze(1)
    point_polygon = data['map_point', 'to', 'map_polygon']['edge_index'][1]
    keep_points = torch.isin(point_polygon, keep_polygons).nonzero().squeeze(1)
    ids = agent['id']
    data = data.clone()
    del data['agent'].id  # a list: subgraph cannot index it
    sub = data.subgraph({'agent': keep_agents, 'map_polygon': keep_polygons, 'map_point': keep_points})
    sub['agent']['id'] = [ids[i] for i in keep_agents.tolist()]
    sub['agent']['av_index'] = int((keep_agents == av).nonzero()[0, 0])
    return sub
