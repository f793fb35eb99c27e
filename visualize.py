"""Prediction plots (and optionally pre-training views) of a few scenarios, one PNG per scenario.

Examples:
    # two checkpoints side by side on the first 8 validation scenarios
    python visualize.py --root data/av2 --split val --ckpt_path scratch.ckpt --compare_ckpt pretrained.ckpt \
        --labels scratch pretrained --num_scenarios 8 --out_dir plots/
    # ground truth only (no checkpoint), real AV2 folders, chosen scenarios, plus the pre-training views
    python visualize.py --root data/av2 --split val --raw_dir /data/av2/val --scenario_ids ID1 ID2 --views

Samples are read from the processed cache where a current cache file exists, otherwise built in memory from the raw
scenario (the same processing): plotting a few scenarios of a big raw split never preprocesses the whole split.
"""
import os
import sys
from argparse import SUPPRESS, ArgumentParser, Namespace
from typing import Any, List, Optional, Sequence

from utils.cli import HelpFormatter, bool_flag, check_checkpoint_file

DEFAULT_NUM_HISTORICAL_STEPS = 50
DEFAULT_NUM_FUTURE_STEPS = 60


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description='Plot the focal agent\'s ground truth and predicted modes, one PNG per '
                                        'scenario (world frame, zoomed on the focal agent).',
                            formatter_class=HelpFormatter)
    parser.add_argument('--model', type=str, default='auto',
                        help='predictor class of the checkpoints (QCNet, ForecastMAE); auto: the one stored in each '
                             'checkpoint, so two models can be compared side by side')
    parser.add_argument('--root', type=str, required=True, help='dataset root (as for val.py)')
    parser.add_argument('--split', type=str, default='val', help='split name (train, val, test, ...)')
    parser.add_argument('--raw_dir', type=str, default=None,
                        help='raw AV2 scenario folders of the split (default <root>/<split>/raw)')
    parser.add_argument('--processed_dir', type=str, default=None,
                        help='processed cache of the split (default <root>/<split>/processed)')
    parser.add_argument('--ckpt_path', type=str, default=None, help='checkpoint to plot; omit for ground truth only')
    parser.add_argument('--compare_ckpt', type=str, default=None,
                        help='second checkpoint drawn side by side on the same scenarios (e.g. pre-trained)')
    parser.add_argument('--labels', type=str, nargs='+', default=None,
                        help='panel titles, one per checkpoint (default: checkpoint file names)')
    parser.add_argument('--num_scenarios', type=int, default=8,
                        help='how many scenarios (the first ones of the split) when --scenario_ids is not given')
    parser.add_argument('--scenario_ids', type=str, nargs='+', default=None, help='plot exactly these scenarios')
    parser.add_argument('--out_dir', type=str, default='plots', help='where the PNGs go')
    parser.add_argument('--views', **bool_flag(False),
                        help='also plot the two temporal pre-training views of each scenario (<id>_views.png)')
    parser.add_argument('--view_seed', type=int, default=0, help='seed of the view windows (as SSLViews)')
    parser.add_argument('--view_radius', type=float, default=60.0,
                        help='half-width (m) of the view around the focal agent; grows to fit long predictions')
    parser.add_argument('--num_historical_steps', type=int, default=None,
                        help=f'history length (default: from the checkpoint, else {DEFAULT_NUM_HISTORICAL_STEPS})')
    parser.add_argument('--num_future_steps', type=int, default=None,
                        help=f'future length (default: from the checkpoint, else {DEFAULT_NUM_FUTURE_STEPS})')
    parser.add_argument('--accelerator', type=str, default='cpu', help="'cpu', 'gpu' or 'auto'")
    parser.add_argument('--dpi', type=int, default=150, help='resolution of the PNGs')
    parser.add_argument('--probabilities', **bool_flag(True), help='write the mode probabilities next to the modes')
    parser.add_argument('--no_probabilities', dest='probabilities', action='store_false', help=SUPPRESS)  # = 0
    return parser


def select_device(accelerator: str) -> Any:
    """Lightning-style accelerator name -> torch device; asking for a missing GPU is an error."""
    import torch
    if accelerator == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if accelerator in ('gpu', 'cuda'):
        if not torch.cuda.is_available():
            raise SystemExit('visualize.py: --accelerator gpu requested but no CUDA device is available')
        return torch.device('cuda')
    if accelerator == 'cpu':
        return torch.device('cpu')
    raise SystemExit(f'visualize.py: unknown --accelerator {accelerator!r} (use cpu, gpu or auto)')


def load_model(model_name: str, path: str, device: Any) -> Any:
    check_checkpoint_file(path, '--ckpt_path')
    from predictors.registry import model_class_for_checkpoint
    try:
        model = model_class_for_checkpoint(path, model_name).load_from_checkpoint(checkpoint_path=path,
                                                                                   map_location=device)
    except ValueError as error:  # another model's or a pre-training checkpoint, unknown --model
        raise SystemExit(f'visualize.py: {error}') from None
    return model.eval().to(device)


class ScenarioSource:
    """Scenarios of one split: names from the raw folder (else the cache), samples from the cache or the raw files."""

    def __init__(self, raw_dir: str, processed_dir: str, num_historical_steps: int, num_future_steps: int) -> None:
        from datasets import CACHE_SUFFIX, list_argoverse_v2_scenarios
        from datasets.preprocess import ProcessingOptions
        self.raw_dir, self.processed_dir = raw_dir, processed_dir
        self.options = ProcessingOptions(num_historical_steps=num_historical_steps,
                                         num_future_steps=num_future_steps)
        self.names = list_argoverse_v2_scenarios(raw_dir)
        self.from_raw = bool(self.names)
        if not self.from_raw and os.path.isdir(processed_dir):
            self.names = sorted(name[:-len(CACHE_SUFFIX)] for name in os.listdir(processed_dir)
                                if name.endswith(CACHE_SUFFIX))
        if not self.names:
            raise SystemExit(f'visualize.py: no scenarios: {raw_dir} has no scenario folders and {processed_dir} '
                             f'has no *{CACHE_SUFFIX} files')

    def select(self, scenario_ids: Optional[Sequence[str]], num_scenarios: int) -> List[str]:
        if not scenario_ids:
            if num_scenarios < 1:
                raise SystemExit('visualize.py: --num_scenarios must be at least 1')
            return self.names[:num_scenarios]
        known = set(self.names)
        missing = [name for name in scenario_ids if name not in known]
        if missing:
            where = self.raw_dir if self.from_raw else self.processed_dir
            raise SystemExit(f'visualize.py: scenario(s) {", ".join(missing)} not found in {where} '
                             f'({len(self.names)} scenarios there)')
        return list(scenario_ids)

    def load(self, name: str) -> Any:
        from datasets import build_qcnet_features, load_argoverse_v2_scenario, load_features, to_hetero_data
        from datasets.preprocess import processed_file_name
        from datasets.storage import is_current_cache_file, read_header
        cache = os.path.join(self.processed_dir, processed_file_name(name))
        if os.path.isfile(cache) and (is_current_cache_file(cache) or not self.from_raw):
            meta = read_header(cache)['meta']
            steps = (meta.get('num_historical_steps'), meta.get('num_future_steps'))
            wanted = (self.options.num_historical_steps, self.options.num_future_steps)
            if steps != wanted:  # other options (dim, ssl mask, ...) do not change what is drawn
                raise SystemExit(f'visualize.py: {cache} was processed with {steps[0]} history + {steps[1]} future '
                                 f'steps, expected {wanted[0]} + {wanted[1]}')
            return to_hetero_data(load_features(cache))
        from datasets import ScenarioError
        options = self.options
        try:
            record = load_argoverse_v2_scenario(os.path.join(self.raw_dir, name),
                                                num_historical_steps=options.num_historical_steps,
                                                num_future_steps=options.num_future_steps)
        except ScenarioError as error:  # already '<file>: <problem>'
            raise SystemExit(f'visualize.py: {error}') from None
        return to_hetero_data(build_qcnet_features(record, dim=options.dim,
                                                   predict_unseen_agents=options.predict_unseen_agents,
                                                   vector_repr=options.vector_repr,
                                                   include_ssl_mask=options.include_ssl_mask))


def run_model(model: Any, data: Any, device: Any, label: str) -> Any:
    """Runs one scenario through ``model`` (a batch of one) and returns the focal agent's world-frame Prediction."""
    import torch
    from torch_geometric.data import Batch
    from utils.visualize import prediction_from_output
    batch = Batch.from_data_list([data]).to(device)
    with torch.no_grad():
        output = model(batch)
    return prediction_from_output(data, output, num_historical_steps=model.num_historical_steps, label=label)


def view_windows(data: Any, num_historical_steps: int, num_future_steps: int, seed: int) -> List[Any]:
    """The anchor/target windows ``transforms.SSLViews`` cuts from this scenario (epoch 0, given seed)."""
    from transforms.ssl_views import SSLViews
    from utils.visualize import windows_from_views
    if not bool(data['agent']['valid_mask'][:, num_historical_steps:].any()):
        raise SystemExit(f'visualize.py: scenario {data["scenario_id"]} has no observed future; pre-training views '
                         f'(--views) need the train or val split')
    views = SSLViews(num_historical_steps, num_future_steps, seed=seed)(data)
    return windows_from_views(views)


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    """Parses ``argv``, writes the PNGs and returns their paths (also printed, one per line)."""
    args: Namespace = build_parser().parse_args(argv)
    if args.compare_ckpt and not args.ckpt_path:
        raise SystemExit('visualize.py: --compare_ckpt needs --ckpt_path as well')
    checkpoints = [path for path in (args.ckpt_path, args.compare_ckpt) if path]
    labels = args.labels if args.labels else [os.path.splitext(os.path.basename(p))[0] for p in checkpoints]
    if len(labels) != len(checkpoints):
        raise SystemExit(f'visualize.py: {len(labels)} --labels for {len(checkpoints)} checkpoint(s)')

    from utils.cli import ensure_output_dir
    from utils.visualize import plot_pretraining_views, plot_scenario, save_figure
    ensure_output_dir(args.out_dir, '--out_dir')  # before any model or scenario is loaded
    device = select_device(args.accelerator)
    models = [load_model(args.model, path, device) for path in checkpoints]
    num_historical_steps = args.num_historical_steps or (models[0].num_historical_steps if models
                                                         else DEFAULT_NUM_HISTORICAL_STEPS)
    num_future_steps = args.num_future_steps or (models[0].num_future_steps if models else DEFAULT_NUM_FUTURE_STEPS)
    for path, model in zip(checkpoints, models):
        if (model.num_historical_steps, model.num_future_steps) != (num_historical_steps, num_future_steps):
            raise SystemExit(f'visualize.py: {path} predicts {model.num_future_steps} steps from '
                             f'{model.num_historical_steps}, but {num_future_steps} from {num_historical_steps} '
                             f'were asked for')

    from datasets.argoverse_v2_dataset import default_split_dirs
    default_raw, default_processed = default_split_dirs(args.root, args.split)
    raw_dir = args.raw_dir or default_raw
    processed_dir = args.processed_dir or default_processed
    source = ScenarioSource(raw_dir, processed_dir, num_historical_steps, num_future_steps)
    written = []
    for name in source.select(args.scenario_ids, args.num_scenarios):
        data = source.load(name)
        predictions = [run_model(model, data, device, label) for model, label in zip(models, labels)]
        figure = plot_scenario(data, predictions, num_historical_steps=num_historical_steps,
                               view_radius=args.view_radius, show_probabilities=args.probabilities)
        path = save_figure(figure, os.path.join(args.out_dir, f'{name}.png'), dpi=args.dpi)
        written.append(path)
        print(path, flush=True)
        if args.views:
            windows = view_windows(data, num_historical_steps, num_future_steps, args.view_seed)
            figure = plot_pretraining_views(data, windows, view_radius=args.view_radius)
            path = save_figure(figure, os.path.join(args.out_dir, f'{name}_views.png'), dpi=args.dpi)
            written.append(path)
            print(path, flush=True)
    print(f'visualize.py: wrote {len(written)} PNG(s) to {os.path.abspath(args.out_dir)}', file=sys.stderr)
    return written


if __name__ == '__main__':
    from utils.cli import run_main
    run_main(main)
