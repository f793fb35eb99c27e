#!/usr/bin/env python
"""Checks that this project's QCNet is numerically equivalent to the official implementation.

Builds the official QCNet (imported at run time from --official_repo) and ours with identical weights (the official
state dict is loaded strictly into ours), runs both on the same real Argoverse 2 scenarios (processed by this
project's datasets package), and compares every output tensor, the training loss terms and every parameter gradient
after a backward pass. Optionally (--smartpretrain_repo) also compares the propose-only SSL decoder.

Error measure per tensor: max |ours - official| / max |official| (scale-relative max error); the check passes when
every value is below --tolerance (default 1e-4). Dropout probabilities are set to 0 so both runs are
deterministic.

Example:
  python benchmarks/check_official_equivalence.py --official_repo ../QCNet \\
      --smartpretrain_repo ../SmartPretrain --report docs/equivalence_run.json
"""
import argparse
import copy
import json
import os
import sys
import time
from typing import Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.official_stubs import forget_generated_propagate_modules, import_official  # noqa: E402
from utils.atomic_io import atomic_write_text  # noqa: E402

AV2_CONFIG = dict(dataset='argoverse_v2', input_dim=2, hidden_dim=128, output_dim=2, output_head=False,
                  num_historical_steps=50, num_future_steps=60, num_modes=6, num_recurrent_steps=3,
                  num_freq_bands=64, num_map_layers=1, num_agent_layers=2, num_dec_layers=2, num_heads=8,
                  head_dim=16, dropout=0.1, pl2pl_radius=150.0, time_span=10, pl2a_radius=50.0, a2a_radius=50.0,
                  num_t2m_steps=30, pl2m_radius=150.0, a2m_radius=150.0, lr=5e-4, weight_decay=1e-4, T_max=64,
                  submission_dir='./', submission_file_name='submission')
OUTPUT_KEYS = ('loc_propose_pos', 'scale_propose_pos', 'loc_propose_head', 'conc_propose_head', 'loc_refine_pos',
               'scale_refine_pos', 'loc_refine_head', 'conc_refine_head', 'pi')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--official_repo', type=str, required=True, help='path of the official QCNet repository')
    parser.add_argument('--smartpretrain_repo', type=str, default=None,
                        help='path of the official SmartPretrain repository (also compares the SSL decoder)')
    parser.add_argument('--data_root', type=str, default=os.path.join(ROOT, 'tests', 'data', 'av2'),
                        help='folder with <split>/<scenario_id>/ raw Argoverse 2 scenarios')
    parser.add_argument('--scenes_file', type=str, default=None,
                        help='torch.save\'d {split: [HeteroData]} to use instead of --data_root')
    parser.add_argument('--splits', type=str, nargs='+', default=['train', 'test'])
    parser.add_argument('--max_scenarios', type=int, default=4, help='per split')
    parser.add_argument('--dtype', type=str, default='float32', choices=['float32', 'float64'])
    parser.add_argument('--device', type=str, default='cpu')
    parser.add_argument('--tolerance', type=float, default=1e-4)
    parser.add_argument('--seed', type=int, default=2023)
    parser.add_argument('--hidden_dim', type=int, default=AV2_CONFIG['hidden_dim'],
                        help='model width (128 = official AV2 setting; smaller runs faster)')
    parser.add_argument('--output_head', action='store_true', help='also predict headings (von Mises)')
    parser.add_argument('--no_grad_check', action='store_true', help='skip the backward-pass comparison')
    parser.add_argument('--stand_in', choices=['reference', 'fast'], default='reference',
                        help='torch_cluster stand-in for the official code when torch_cluster is not installed: '
                             'reference = simple independent loops (slow), fast = utils.graph (for GPU runs)')
    parser.add_argument('--report', type=str, default=None, help='write the measured errors as JSON here')
    return parser.parse_args(argv)


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Training mode (cuDNN's GRU backward needs it) with every dropout probability set to 0 (deterministic)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.train()


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    """(max abs difference, max abs difference / max |ref|)."""
    if ours.shape != ref.shape:
        raise AssertionError(f'shape mismatch: ours {tuple(ours.shape)} vs official {tuple(ref.shape)}')
    if ref.numel() == 0:
        return 0.0, 0.0
    diff = (ours.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    return diff, diff / scale if scale > 0 else diff


def load_scenes(data_root: str, splits: List[str], max_scenarios: int, num_historical: int, num_future: int,
                scenes_file=None):
    """{split: [HeteroData]} processed by this project's datasets package; train/val scenes get targets."""
    if scenes_file:  # {split: [HeteroData]} saved earlier (machines without the raw data)
        saved = torch.load(scenes_file, weights_only=False)
        if isinstance(saved, (list, tuple)):  # bench_qcnet_step.py --save_scenes: a list of train scenes
            saved = {'train': list(saved)}
        scenes = {split: saved[split][:max_scenarios] for split in splits if saved.get(split)}
        if not scenes:
            raise SystemExit(f'check_official_equivalence: {scenes_file}: no scenes of the splits {splits} '
                             f'(it holds {sorted(saved)})')
        return scenes
    from datasets import list_argoverse_v2_scenarios, load_argoverse_v2_scenario, process_scenario
    from transforms.target_builder import TargetBuilder
    scenes = {}
    for split in splits:
        split_dir = os.path.join(data_root, split)
        if not os.path.isdir(split_dir):
            raise SystemExit(f'check_official_equivalence: {split_dir}: no such folder (see --data_root)')
        items = []
        for scenario_id in list_argoverse_v2_scenarios(split_dir)[:max_scenarios]:
            data = process_scenario(load_argoverse_v2_scenario(os.path.join(split_dir, scenario_id)))
            if split != 'test':
                data = TargetBuilder(num_historical, num_future)(data)
            items.append(data)
        scenes[split] = items
    return scenes


def cast_data(data, dtype: torch.dtype, device: str):
    data = copy.deepcopy(data).to(device)
    for store in data.stores:
        for key, value in store.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                store[key] = value.to(dtype)
    return data


def compare_outputs(ours: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor], keys) -> Dict[str, dict]:
    result = {}
    for key in keys:
        abs_err, rel = rel_error(ours[key], ref[key])
        result[key] = {'max_abs': abs_err, 'max_rel': rel, 'shape': list(ref[key].shape)}
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    # cuDNN runs the GRU in TF32 by default; TF32 rounding turns rounding-level input differences into 1e-3-level
    # output differences, so full precision is forced for the comparison.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = getattr(torch, args.dtype)
    from predictors import QCNet  # ours first: utils.graph must bind to the real torch_cluster (or none)
    from torch_geometric.data import Batch
    if args.stand_in == 'fast':
        from benchmarks.official_stubs import install_fast_stand_ins
        install_fast_stand_ins()
    official = import_official(os.path.abspath(args.official_repo), ['predictors.qcnet'])
    OfficialQCNet = official['predictors.qcnet'].QCNet
    official_ssl_decoder = None
    if args.smartpretrain_repo:
        official_ssl_decoder = import_official(os.path.abspath(args.smartpretrain_repo),
                                               ['modules.qcnet_decoder_ssl'])['modules.qcnet_decoder_ssl']

    config = dict(AV2_CONFIG, hidden_dim=args.hidden_dim, output_head=args.output_head)
    ref_model = without_dropout(OfficialQCNet(**config).to(device=args.device, dtype=dtype))
    forget_generated_propagate_modules()
    our_model = without_dropout(QCNet(**config).to(device=args.device, dtype=dtype))
    our_model.load_state_dict(ref_model.state_dict(), strict=True)

    scenes = load_scenes(args.data_root, args.splits, args.max_scenarios, config['num_historical_steps'],
                         config['num_future_steps'], args.scenes_file)
    cases = []
    for split, items in scenes.items():
        for data in items:
            cases.append((f'{split}/{data["scenario_id"]}', data, split != 'test'))
        if len(items) > 1:
            cases.append((f'{split}/batch_of_{len(items)}', Batch.from_data_list(items), split != 'test'))

    report = {'official_repo': os.path.abspath(args.official_repo), 'dtype': args.dtype, 'device': args.device,
              'config': config, 'tolerance': args.tolerance, 'cases': {}}
    worst = 0.0
    for name, data, has_target in cases:
        start = time.time()
        case = {}
        ref_data = cast_data(data, dtype, args.device)  # each model gets its own copy (official code mutates it)
        our_data = cast_data(data, dtype, args.device)
        with torch.no_grad():
            ref_enc = ref_model.encoder(copy.copy(ref_data))
            our_enc = our_model.encoder(our_data)
        case['encoder'] = compare_outputs(our_enc, ref_enc, ('x_pt', 'x_pl', 'x_a'))
        ref_model.zero_grad(set_to_none=True)
        our_model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(has_target and not args.no_grad_check):
            ref_out = ref_model(cast_data(data, dtype, args.device))
            our_out = our_model(our_data)
        case['outputs'] = compare_outputs(our_out, ref_out, OUTPUT_KEYS)
        if has_target:
            # Winner modes: an untrained model's modes are nearly alike, so a rounding-level difference can pick
            # another winner for an agent, which changes the gradients legitimately; such cases are reported.
            reg_mask = our_data['agent']['predict_mask'][:, config['num_historical_steps']:]
            gt = our_data['agent']['target'][..., :2].unsqueeze(1)
            winners = [(torch.linalg.vector_norm(out['loc_propose_pos'][..., :2] - gt, dim=-1)
                        * reg_mask.unsqueeze(1)).sum(-1).argmin(-1) for out in (our_out, ref_out)]
            evaluated = reg_mask.any(-1)
            case['winner_mode_mismatches'] = int((winners[0] != winners[1])[evaluated].sum())
            our_losses = our_model.compute_losses(our_data, our_out)
            ref_loss = ref_model.training_step(cast_data(data, dtype, args.device), 0)
            case['loss'] = {'official': ref_loss.item(), 'ours': our_losses['loss'].item(),
                            'max_abs': abs(ref_loss.item() - our_losses['loss'].item()),
                            'max_rel': abs(ref_loss.item() - our_losses['loss'].item()) / abs(ref_loss.item())}
            if not args.no_grad_check:
                # The official training_step recomputes the forward pass; backprop both losses from scratch.
                ref_model.zero_grad(set_to_none=True)
                our_model.zero_grad(set_to_none=True)
                ref_model.training_step(cast_data(data, dtype, args.device), 0).backward()
                our_model.training_step(cast_data(data, dtype, args.device), 0).backward()
                ref_grads = dict(ref_model.named_parameters())
                grad_errors = {}
                for pname, param in our_model.named_parameters():
                    ref_grad = ref_grads[pname].grad
                    if ref_grad is None and param.grad is None:
                        continue
                    if (ref_grad is None) != (param.grad is None):
                        raise AssertionError(f'{name}: gradient of {pname} exists in only one model')
                    grad_errors[pname] = rel_error(param.grad, ref_grad)
                total_abs = max(err[0] for err in grad_errors.values())
                total_ref = max(ref_grads[p].grad.double().abs().max().item() for p in grad_errors)
                # Per-tensor errors are only meaningful for gradients that are not zero up to rounding (e.g. the
                # bias of the mode logits has an exactly zero gradient: the softmax is shift invariant).
                significant = {p: err for p, err in grad_errors.items()
                               if ref_grads[p].grad.double().abs().max().item() > 1e-3 * total_ref}
                worst_name = max(significant, key=lambda k: significant[k][1])
                case['gradients'] = {'num_parameters_compared': len(grad_errors),
                                     'max_rel_over_all_gradients': total_abs / total_ref,
                                     'worst_parameter': worst_name,
                                     'worst_parameter_max_rel': significant[worst_name][1],
                                     'worst_parameter_max_abs': significant[worst_name][0],
                                     'num_parameters_with_significant_gradient': len(significant)}
        if official_ssl_decoder is not None:
            case['ssl_decoder'] = compare_ssl_decoder(official_ssl_decoder, config, ref_model, data, dtype,
                                                      args.device)
        case['seconds'] = round(time.time() - start, 2)
        report['cases'][name] = case
        rels = [v['max_rel'] for part in ('encoder', 'outputs') for v in case[part].values()]
        if 'loss' in case:
            rels.append(case['loss']['max_rel'])
        if 'gradients' in case and case['winner_mode_mismatches'] == 0:
            rels.append(case['gradients']['max_rel_over_all_gradients'])
        if 'ssl_decoder' in case:
            rels.append(case['ssl_decoder']['max_rel'])
        case_worst = max(rels)
        worst = max(worst, case_worst)
        print(f'{name}: worst scale-relative error {case_worst:.3e} ({case["seconds"]} s)')
        for part in ('encoder', 'outputs'):
            for key, value in case[part].items():
                print(f'    {part}.{key:18s} max_abs {value["max_abs"]:.3e}  max_rel {value["max_rel"]:.3e}')
        if 'loss' in case:
            print(f'    training loss      official {case["loss"]["official"]:.6f} ours {case["loss"]["ours"]:.6f}'
                  f'  rel {case["loss"]["max_rel"]:.3e}')
        if 'gradients' in case:
            g = case['gradients']
            print(f'    gradients ({g["num_parameters_compared"]} tensors): max_rel over all '
                  f'{g["max_rel_over_all_gradients"]:.3e}; worst single tensor (of '
                  f'{g["num_parameters_with_significant_gradient"]} with non-negligible gradient) {g["worst_parameter"]} '
                  f'{g["worst_parameter_max_rel"]:.3e}')
            if case['winner_mode_mismatches']:
                print(f'    NOTE: {case["winner_mode_mismatches"]} agent(s) got another winner mode from a rounding-level '
                      f'difference (near tie); gradients excluded from the verdict for this case')
        if 'ssl_decoder' in case:
            print(f'    ssl decoder        max_abs {case["ssl_decoder"]["max_abs"]:.3e}  '
                  f'max_rel {case["ssl_decoder"]["max_rel"]:.3e}')
    if not report['cases']:  # nothing compared is not a pass
        raise SystemExit('check_official_equivalence: no scene was compared')
    report['worst_max_rel'] = worst
    report['passed'] = worst < args.tolerance
    if args.report:
        atomic_write_text(args.report, json.dumps(report, indent=2))
    print(f'worst scale-relative error over all cases: {worst:.3e} -> '
          f'{"PASS" if report["passed"] else "FAIL"} (tolerance {args.tolerance:g})')
    return 0 if report['passed'] else 1


def compare_ssl_decoder(official_module, config: dict, ref_model, data, dtype, device) -> dict:
    """Official SmartPretrain propose-only decoder vs ours (num_modes=1), weights shared, on one scene."""
    from modules import QCNetProposalDecoder
    kwargs = {k: config[k] for k in ('dataset', 'input_dim', 'hidden_dim', 'output_dim', 'output_head',
                                     'num_historical_steps', 'num_future_steps', 'num_recurrent_steps',
                                     'num_t2m_steps', 'pl2m_radius', 'a2m_radius', 'num_freq_bands', 'num_heads',
                                     'head_dim', 'dropout')}
    kwargs.update(num_modes=1, num_layers=config['num_dec_layers'])
    forget_generated_propagate_modules()
    ref_dec = without_dropout(official_module.QCNetDecoder_ssl(**kwargs).to(device=device, dtype=dtype))
    forget_generated_propagate_modules()
    our_dec = without_dropout(QCNetProposalDecoder(**kwargs).to(device=device, dtype=dtype))
    our_dec.load_state_dict(ref_dec.state_dict(), strict=True)
    with torch.no_grad():
        scene_enc = ref_model.encoder(cast_data(data, dtype, device))
        ref = ref_dec(cast_data(data, dtype, device), scene_enc)
        ours = our_dec(cast_data(data, dtype, device), scene_enc)
    abs_err, rel = rel_error(ours, ref)
    return {'max_abs': abs_err, 'max_rel': rel, 'shape': list(ref.shape)}


if __name__ == '__main__':
    sys.exit(main())
