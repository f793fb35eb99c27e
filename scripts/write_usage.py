#!/usr/bin/env python
"""Writes docs/USAGE.md: one section per command, its flags taken from the command's own ``--help``.

The paragraphs (what a command does, a typical command line) are written here by hand; the flag lists are parsed
from ``python <script> --help`` (grouped as argparse groups them) and the launchers' environment variables from the
``NAME=${NAME:-default}`` lines of the ``.sh`` files, so the file follows the parsers when flags change:

    python scripts/write_usage.py            # rewrite docs/USAGE.md
    python scripts/write_usage.py --check    # exit status 1 when docs/USAGE.md differs from what it would write

tests/test_usage_doc.py runs the check.
"""
import argparse
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USAGE_PATH = os.path.join(REPO, 'docs', 'USAGE.md')


@dataclass
class Section:
    """One command of docs/USAGE.md."""
    title: str
    text: str                                         # hand-written: what it does, a typical command line
    help_argv: Optional[List[str]] = None             # argv after the python interpreter that prints --help
    launcher: Optional[str] = None                    # a .sh launcher whose environment variables are listed
    verbatim_help: Optional[List[str]] = None         # a command whose --help text is shown as it is


INTRO = """\
# Usage

Every command of the repository, what it does, a typical command line and its flags. The flag lists are the
commands' own `--help`, grouped as there; `python scripts/write_usage.py` rewrites this file after a flag changes
(tests/test_usage_doc.py fails while it is out of date).

Conventions shared by all scripts:
- Flags mirror the official QCNet `train_qcnet.py` and SmartPretrain `train_qcnet_ssl.py`; the model flags are saved as
  hyper-parameters in each checkpoint, so `val.py`, `test.py` and `visualize.py` need only `--ckpt_path`.
- The `.sh` launchers take their settings from environment variables with defaults (`ROOT=/data/av2 DEVICES=8 bash
  train.sh`) and pass extra arguments on to the Python script. With the default `ROOT=data/synthetic` they write
  synthetic Argoverse 2 data on first use. `PYTHON` picks the interpreter (default: `.venv/bin/python` when it exists).
- Long jobs show progress bars and end with a one-screen summary. Training resumes with `--resume` (optimizer,
  schedules, epoch and RNG state); checkpoints are written atomically, also every `--save_every_n_steps` steps and on
  SIGTERM. Bad input ends a script with one line `error: <file>: <problem> (<fix>)` and exit status 2
  (docs/RELIABILITY.md).
- Data layout: either the official QCNet layout `ROOT/<split>/raw/<scenario_id>/` + `ROOT/<split>/processed/`, or the
  Argoverse 2 download layout `ROOT/<split>/<scenario_id>/` with processed files in `ROOT/processed/<split>/`;
  `--train_raw_dir`, `--val_processed_dir`, ... override each folder (docs/DATA.md, docs/DATASETS.md).
"""

SECTIONS: List[Section] = [
    Section('demo.sh', """\
The whole pipeline on synthetic data through the project's own commands: synthetic Argoverse 2 scenarios ->
preprocessing -> SmartPretrain pre-training -> fine-tuning QCNet from it -> validation (metric table next to a
constant-velocity guess) -> test submission -> prediction plots. Everything goes to `demo_output/` (`--out DIR`);
each stage's log is in `demo_output/logs/demo_<n>_<stage>.log`. Creates `.venv/` on first use
(`scripts/setup_env.sh`).

```bash
bash demo.sh                  # CPU: tiny model, 160/32/16 scenarios, a few minutes
bash demo.sh --gpu            # one GPU: bigger scenes, data and model, bf16-mixed training
```
""", verbatim_help=['bash', 'demo.sh', '--help']),
    Section('run_tests.sh', """\
Installs what is missing (`scripts/setup_env.sh`) and runs the test suite with pytest; extra arguments go to pytest.
Tests that need the real Argoverse 2 / Waymo samples read them from `tests/data/` (tests/data/README.md). A test
running longer than 10 minutes counts as stuck (`timeout` in `pytest.ini`): the run stops and prints every thread's
stack. CI (`.ci/run`) runs `bash run_tests.sh -q --durations=15`.

```bash
bash run_tests.sh                       # the whole suite
bash run_tests.sh -k metrics -x         # a subset, stop at the first failure
```
"""),
    Section('python -m datasets.synthetic', """\
Writes synthetic scenarios in the Argoverse 2 file format and layout (`DIR/<split>/<id>/scenario_<id>.parquet`,
`log_map_archive_<id>.json`), readable by av2's own loaders; deterministic per seed. Profiles: `default` (urban
intersections), `highway`, `demo` (small scenes for the CPU demo).

```bash
python -m datasets.synthetic --out data/synthetic --split train --num 200 --seed 0 --num_workers 8
```
""", help_argv=['-m', 'datasets.synthetic', '--help']),
    Section('python -m datasets.preprocess', """\
Builds the QCNet samples ahead of training, one compressed `.qcs` file per scenario: parallel, resumable, atomic.
Bad scenarios are listed in `<processed_dir>/failures.json` and skipped (`--strict` stops instead). The training
scripts also preprocess missing files on first use; running this first uses every core.

```bash
python -m datasets.preprocess --dataset argoverse_v2 --raw_dir $ROOT/train --processed_dir $ROOT/processed/train \\
    --num_workers 32
```
""", help_argv=['-m', 'datasets.preprocess', '--help']),
    Section('train_ssl.py, train_ssl.sh', """\
SmartPretrain pre-training (contrastive + reconstructive pretext tasks) of a QCNet or Forecast-MAE backbone, on
Argoverse 2 alone or mixed with Argoverse 1 and Waymo Open Motion. `train_ssl.sh` runs the official recipe: 32
epochs, batch 4 per GPU, lr 1e-4 -> 1.5e-3 over 15 warm-up epochs then cosine to 1e-6, weight decay 1e-2 -> 1e-1,
momentum 0.996 -> 1, temperature 0.07. The checkpoint (`logs_pretrain/<exp>/checkpoints/last.ckpt`) has the official
SmartPretrain layout.

```bash
ROOT=/data/av2 DEVICES=8 bash train_ssl.sh                 # 8 GPUs x batch 4 = global batch 32
python train_ssl.py --root /data/av2 ... --load_waymo 1 --waymo_root /data/womd   # mixed datasets
```
""", help_argv=['train_ssl.py', '--help'], launcher='train_ssl.sh'),
    Section('train.py, train.sh', """\
Supervised training of QCNet (or `--model ForecastMAE`), from scratch or fine-tuned from a SmartPretrain checkpoint
(ours or the official one: `--pretrained_ckpt CKPT --copy_refine 1`). `train.sh` fine-tunes from the newest
`logs_pretrain/*/checkpoints/last.ckpt` by default (`PRETRAINED_CKPT=none` trains from scratch); `FAST=1` adds every
GPU speed option (`--cuda_graphs --compile_attention --compile_embeddings --compile_gru --build_graph_in_workers`;
docs/PERFORMANCE.md). Checkpoints: `lightning_logs/<exp>/checkpoints/` (top-5 by val minFDE + `last.ckpt`).
`python train.py --model ForecastMAE --help` lists the Forecast-MAE flags.

```bash
ROOT=/data/av2 DEVICES=8 PRETRAINED_CKPT=logs_pretrain/smartpretrain_bz4_epoch32/checkpoints/last.ckpt bash train.sh
```
""", help_argv=['train.py', '--help'], launcher='train.sh'),
    Section('val.py, val.sh', """\
Argoverse 2 metrics of a checkpoint (ours or official) on the val split: minADE, minFDE, MR, Brier, brier-minFDE,
minAHE, minFHE (K = 6, focal agents), as a table and optionally as JSON. `FAST=1` adds `--cuda_graphs --compile
--build_graph_in_workers`.

```bash
ROOT=/data/av2 CKPT=/path/QCNet_AV2.ckpt bash val.sh
python val.py --root /data/av2 --ckpt_path last.ckpt --output_json val.json
```
""", help_argv=['val.py', '--help'], launcher='val.sh'),
    Section('test.py, test.sh', """\
The Argoverse 2 leaderboard file (`submissions/submission.parquet`, written with av2's `ChallengeSubmission`), one
file even with several GPUs, checked to cover every test scenario.

```bash
ROOT=/data/av2 CKPT=lightning_logs/qcnet_av2/checkpoints/last.ckpt DEVICES=4 bash test.sh
```
""", help_argv=['test.py', '--help'], launcher='test.sh'),
    Section('visualize.py', """\
Paper-style plots, one PNG per scenario: lanes, crosswalks, histories, ground truth (pink) and the six predicted
modes (blue, with probabilities); two checkpoints side by side with `--compare_ckpt`; `--views` draws the
pre-training anchor/target windows (docs/VISUALIZE.md).

```bash
python visualize.py --root data/av2 --split val --ckpt_path scratch.ckpt --compare_ckpt pretrained.ckpt \\
    --labels scratch pretrained --num_scenarios 8 --out_dir plots/
```
""", help_argv=['visualize.py', '--help']),
    Section('python -m utils.export_pretrained', """\
A slim copy of a pre-training checkpoint for fine-tuning: the momentum (or online) encoder and decoder and the
hyper-parameters only (full-size QCNet: 10.6 MiB in float16 instead of ~101 MiB). `train.py --pretrained_ckpt` reads
it like the full file.

```bash
python -m utils.export_pretrained logs_pretrain/run/checkpoints/last.ckpt pretrained_slim.ckpt
```
""", help_argv=['-m', 'utils.export_pretrained', '--help']),
]

BENCHMARKS = """\
## Benchmark scripts

Each has `--help`; docs/BENCHMARKS.md records their results with date, card and command.

| command | measures |
|---|---|
| `python benchmarks/bench_preprocess.py` | preprocessing time and file size per scenario, ours and the official code |
| `python benchmarks/bench_qcnet_step.py` | QCNet training step and inference on real scenes (ours or `--impl official`): scenarios/s, peak memory, kernel time (`--profile`) |
| `python benchmarks/bench_backbones.py` | supervised and SSL steps of both backbones |
| `python benchmarks/bench_fourier_embedding.py` | one edge embedding, eager vs torch.compile: time, memory kept for backward |
| `bash benchmarks/qcnet_speed_protocol.sh` | the official step and ours with every speed option on one machine, one process per configuration |
| `python benchmarks/cuda_graphs_training.py` | eager vs `--cuda_graphs` training and validation through Lightning on varying batches |
| `python benchmarks/precision_check.py` | short float32 vs bf16-mixed trainings: metrics and seed spread |
| `python benchmarks/check_official_equivalence.py` | outputs, losses and gradients against the official QCNet / SmartPretrain code (docs/EQUIVALENCE.md) |
| `python benchmarks/ssl_low_label.py pretrain\|finetune\|report` | low-label study (docs/LOW_LABEL.md): pre-train on an unlabelled pool, fine-tune every arm on labelled subsets, paired gains against scratch |
| `python benchmarks/momentum_init_share.py` | how much of its random initialisation a momentum branch still holds |
| `python benchmarks/scaling_sweep.py` | gain of pre-training vs pre-training data and compute, power-law fits (docs/SCALING.md) |
| `python benchmarks/synthetic_generation_speed.py` | synthetic scenario generation per core, in memory and with file writes (docs/REALISM_SYNTHETIC.md) |
"""


@dataclass
class HelpGroup:
    title: str
    description: str = ''
    options: List[Tuple[str, str]] = field(default_factory=list)   # (invocation, help text)


def parse_help(text: str) -> List[HelpGroup]:
    """The argument groups of an argparse help text (printed without line wrapping), ``-h/--help`` left out."""
    lines = text.splitlines()
    i = 0
    while i < len(lines) and not lines[i].startswith('usage:'):
        i += 1
    while i < len(lines) and lines[i].strip():          # the usage block ends at the first blank line
        i += 1
    groups: List[HelpGroup] = []
    current: Optional[List[str]] = None                 # [invocation, help] of the option being read
    for line in lines[i:]:
        if not line.strip():
            current = None
            continue
        heading = re.match(r'^(\S.*):$', line)
        if heading:
            groups.append(HelpGroup(heading.group(1)))
            current = None
            continue
        if not groups:                                   # the parser's description
            continue
        option = re.match(r'^  (-\S.*?)(?:\s{2,}(\S.*))?$', line)
        if option:
            current = [option.group(1), option.group(2) or '']
            groups[-1].options.append(current)          # type: ignore[arg-type]
            continue
        if current is not None and line.startswith('   '):
            current[1] = (current[1] + ' ' + line.strip()).strip()
        elif current is None and line.startswith('  '):
            groups[-1].description = (groups[-1].description + ' ' + line.strip()).strip()
    for group in groups:
        group.options = [tuple(o) for o in group.options if o[0] not in ('-h, --help', '--help, -h')]
    return [g for g in groups if g.options]


def launcher_variables(path: str) -> List[Tuple[str, str]]:
    """(name, default) of every ``${NAME:-default}`` in a shell script, in order of first use."""
    seen: Dict[str, str] = {}
    with open(path) as f:
        for line in f:
            if line.lstrip().startswith('#'):
                continue
            for match in re.finditer(r'\$\{([A-Z][A-Z0-9_]*):-', line):
                depth, end = 1, match.end()           # the default may hold ${...} itself
                while end < len(line) and depth:
                    depth += {'{': 1, '}': -1}.get(line[end], 0)
                    end += 1
                seen.setdefault(match.group(1), line[match.end():end - 1])
    return list(seen.items())


def run_help(argv: Sequence[str], python: str) -> str:
    """stdout of a command's --help, without line wrapping (COLUMNS) and without warnings."""
    env = dict(os.environ, COLUMNS='10000', OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    cmd = list(argv) if argv[0] == 'bash' else [python, *argv]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)}: exit status {proc.returncode}\n{proc.stderr[-2000:]}')
    return proc.stdout


def render_groups(groups: List[HelpGroup], command: str) -> str:
    out = [f'Flags (`{command} --help`):', '']
    for group in groups:
        out.append(f'*{group.title}*' + (f': {group.description}' if group.description else ''))
        out.append('')
        for invocation, text in group.options:
            out.append(f'- `{invocation}`' + (f': {text}' if text else ''))
        out.append('')
    return '\n'.join(out)


def render(python: str = sys.executable) -> str:
    """The full text of docs/USAGE.md."""
    commands = [s.help_argv or s.verbatim_help for s in SECTIONS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        helps = list(pool.map(lambda argv: run_help(argv, python) if argv else '', commands))
    parts = [INTRO, '## Contents', '']
    parts += [f'- [{s.title}](#{anchor(s.title)})' for s in SECTIONS] + ['- [Benchmark scripts](#benchmark-scripts)', '']
    for section, help_text in zip(SECTIONS, helps):
        parts += [f'## {section.title}', '', section.text.rstrip(), '']
        if section.verbatim_help:
            parts += [f'`{" ".join(section.verbatim_help)}`:', '', '```', help_text.rstrip(), '```', '']
        if section.help_argv:
            shown = 'python ' + ' '.join(section.help_argv[:-1])
            parts += [render_groups(parse_help(help_text), shown).rstrip(), '']
        if section.launcher:
            variables = launcher_variables(os.path.join(REPO, section.launcher))
            parts += [f'Environment variables of `{section.launcher}` (default):', '',
                      ', '.join(f'`{name}` ({default or "unset"})' for name, default in variables)
                      + '; extra arguments go to the Python script.', '']
    parts.append(BENCHMARKS)
    return '\n'.join(parts).rstrip() + '\n'


def anchor(title: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r'[^a-z0-9 _-]', '', title.lower()).replace(' ', '-')


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Write docs/USAGE.md from the commands\' --help.')
    parser.add_argument('--check', action='store_true',
                        help='only compare: exit status 1 when docs/USAGE.md is out of date')
    parser.add_argument('--out', default=USAGE_PATH, help='output file (default: docs/USAGE.md)')
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        try:
            with open(args.out) as f:
                current = f.read()
        except FileNotFoundError:
            current = ''
        if current != text:
            print(f'error: {args.out}: out of date with the commands\' --help '
                  f'(run `python scripts/write_usage.py`)', file=sys.stderr)
            return 1
        return 0
    sys.path.insert(0, REPO)
    from utils.atomic_io import atomic_write_text
    atomic_write_text(args.out, text)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
