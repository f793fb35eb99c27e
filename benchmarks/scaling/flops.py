"""FLOPs of one training step of the models a sweep trains, counted on real batches."""
import os
import time
from typing import Callable, Dict, List, NamedTuple

from benchmarks.experiment_utils import atomic_write_json, read_json


class FlopConfig(NamedTuple):
    """A training step to count: ``kind`` 'pretrain' (train_ssl.py) or 'finetune' (train.py), the script's flags, and
    the data its batches come from."""
    kind: str
    cli_args: List[str]
    raw_dir: str
    processed_dir: str
    batch_size: int


def measure_step_flops(kind: str, cli_args: List[str], raw_dir: str, processed_dir: str, batch_size: int,
                       num_batches: int, device: str = 'cpu', seed: int = 0) -> dict:
    """FLOPs of training steps (forward + loss + backward, no optimiser update) of the model that
    ``train_ssl.py`` (kind 'pretrain') or ``train.py`` (kind 'finetune') builds from ``cli_args``, counted by
    torch.utils.flop_counter.FlopCounterMode on ``num_batches`` shuffled batches of real data.

    Returns {'flops_per_step' (mean), 'flops_per_scenario', 'scenarios', 'batches', 'by_op' (summed), 'device'}.
    FlopCounterMode counts matrix products (mm/addmm/bmm/baddbmm, convolutions, attention kernels) from their
    shapes; element-wise ops, gathers/scatters of message passing and the optimiser are not counted, so the estimate
    is a lower bound dominated by what dominates the GPU time of a QCNet step."""
    import warnings

    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from torch_geometric.loader import DataLoader

    from datasets.argoverse_v2_dataset import ArgoverseV2Dataset
    if kind == 'pretrain':
        import train_ssl
        from predictors.smartpretrain import SmartPretrain
        from transforms.ssl_views import SSLViews
        args = train_ssl.build_parser().parse_args(cli_args)
        train_ssl.check_args(args)  # as train_ssl.main: normalises the backbone name
        model = SmartPretrain(**vars(args))
        transform = SSLViews(args.num_historical_steps, args.num_future_steps, seed=args.seed)
    elif kind == 'finetune':
        import train
        from predictors.registry import model_class
        from transforms import TargetBuilder
        args = train.parse_args(cli_args)
        model = model_class(args.model)(**vars(args))
        transform = TargetBuilder(args.num_historical_steps, args.num_future_steps)
    else:
        raise ValueError(f'unknown kind {kind!r}')
    dataset = ArgoverseV2Dataset(args.root, 'train', raw_dir, processed_dir, transform=transform,
                                 num_workers=1, progress=False)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    model = model.to(device).train()
    total, scenarios, batches, by_op = 0, 0, 0, {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # self.log() without a trainer
        for batch in loader:
            batch = batch.to(device) if hasattr(batch, 'to') else {k: v.to(device) for k, v in batch.items()}
            model.zero_grad(set_to_none=True)
            with FlopCounterMode(display=False) as counter:
                loss = model.training_step(batch, 0)
                loss.backward()
            total += counter.get_total_flops()
            for op, count in counter.get_flop_counts().get('Global', {}).items():
                by_op[str(op)] = by_op.get(str(op), 0) + int(count)
            first = batch['anchor'] if isinstance(batch, dict) else batch
            scenarios += int(first.num_graphs)
            batches += 1
            if batches >= num_batches:
                break
    if not batches:
        raise ValueError(f'{raw_dir}: no batch to count FLOPs on')
    del model, batch, loss
    if device.startswith('cuda'):
        torch.cuda.empty_cache()  # the training subprocesses need the memory; this process keeps only its context
    return {'flops_per_step': total / batches, 'flops_per_scenario': total / scenarios, 'scenarios': scenarios,
            'batches': batches, 'batch_size': batch_size, 'by_op': by_op, 'device': device}


def measure_sweep_flops(path: str, batch_sizes: Dict[str, int], config_of: Callable[[str], FlopConfig],
                        num_batches: int, device: str) -> Dict[str, dict]:
    """The FLOP counts of the named configurations (``batch_sizes``: name -> batch size), kept in ``path``
    (flops.json): a configuration counted before with the same batch size is not counted again; ``config_of(name)``
    builds a configuration only when it is counted. Each new count is written at once (atomically). Returns every
    stored count."""
    stored = read_json(path, 'FLOP measurements') if os.path.exists(path) else {}
    for name in sorted(batch_sizes):
        if name in stored and stored[name].get('batch_size') == batch_sizes[name]:
            continue
        t0 = time.perf_counter()
        config = config_of(name)
        stored[name] = measure_step_flops(config.kind, config.cli_args, config.raw_dir, config.processed_dir,
                                          config.batch_size, num_batches, device)
        atomic_write_json(path, stored)
        print(f'  FLOPs of one {name} step (batch {config.batch_size}, mean of {stored[name]["batches"]}): '
              f'{stored[name]["flops_per_step"] / 1e9:.1f} GFLOP ({time.perf_counter() - t0:.1f} s)', flush=True)
    return stored
