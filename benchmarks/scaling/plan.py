"""The points of a scaling sweep: what is fine-tuned and on how much pre-training data, in which order."""
from dataclasses import dataclass
from typing import List, Sequence

MIXES = ('single', 'mixed')


@dataclass(frozen=True)
class Point:
    """One fine-tuned model of the sweep: pre-trained on ``num_pretrain`` scenarios of data ``mix``, or from scratch
    (``kind='scratch'``, no mix, N = 0); ``seed`` seeds fine-tuning (and pre-training, see --pretrain_per_seed)."""
    kind: str
    seed: int
    mix: str = ''
    num_pretrain: int = 0

    def __post_init__(self) -> None:
        if self.kind == 'scratch':
            if self.mix or self.num_pretrain:
                raise ValueError('a scratch point has no data mix and no pre-training scenarios')
        elif self.kind == 'pretrained':
            if self.mix not in MIXES or self.num_pretrain <= 0:
                raise ValueError(f'a pre-trained point needs a mix in {MIXES} and N > 0, got {self.mix!r}, '
                                 f'{self.num_pretrain}')
        else:
            raise ValueError(f'unknown point kind {self.kind!r}')

    @property
    def key(self) -> str:
        return f'scratch/s{self.seed}' if self.kind == 'scratch' else f'{self.mix}/n{self.num_pretrain}/s{self.seed}'

    @property
    def run_name(self) -> str:
        return f'scratch_s{self.seed}' if self.kind == 'scratch' else f'ft_{self.mix}_n{self.num_pretrain}_s{self.seed}'

    def describe(self) -> str:
        if self.kind == 'scratch':
            return f'scratch baseline, seed {self.seed}'
        return f'pre-trained on {self.num_pretrain} {self.mix} scenarios, seed {self.seed}'


def geometric_sizes(min_size: int, factor: float, count: int) -> List[int]:
    """[min_size, min_size*factor, ...] rounded, ``count`` distinct sizes."""
    if min_size < 1 or factor <= 1 or count < 1:
        raise ValueError(f'geometric sizes need min_size >= 1, factor > 1, count >= 1 (got {min_size}, {factor}, '
                         f'{count})')
    sizes = sorted({int(round(min_size * factor ** i)) for i in range(count)})
    if len(sizes) != count:
        raise ValueError(f'sizes {sizes}: factor {factor} is too small to give {count} distinct sizes')
    return sizes


def plan_points(sizes: Sequence[int], mixes: Sequence[str], seeds: Sequence[int], baseline: bool = True) -> List[Point]:
    """Scratch baselines first (cheap, and every gain needs them), then sizes ascending (a partial sweep already
    spans the small end), mixes, seeds."""
    points = [Point('scratch', s) for s in seeds] if baseline else []
    points += [Point('pretrained', s, mix, n) for n in sorted(set(sizes)) for mix in mixes for s in seeds]
    return points


def describe_plan(points: Sequence[Point], table, args) -> str:
    """The plan as printed before a sweep: counts of the runs still to do, then one line per point (``table``: a
    :class:`~benchmarks.scaling.results.ResultsTable`; ``args``: the parsed flags)."""
    todo = [p for p in points if not table.has(p.key)]
    pre_runs = {(p.mix, p.num_pretrain, p.seed if args.pretrain_per_seed else args.pretrain_seed)
                for p in todo if p.kind == 'pretrained'}
    scen_epochs = sum(n for _, n, _ in pre_runs) * args.pretrain_epochs
    lines = [f'{len(points)} points ({len(points) - len(todo)} done, {len(todo)} to run): '
             f'{len(pre_runs)} pre-training runs ({scen_epochs} scenario-epochs), {len(todo)} fine-tuning runs '
             f'({len(todo) * args.num_labelled * args.finetune_epochs} scenario-epochs), {len(todo)} val passes']
    for p in points:
        lines.append(f'  [{"done" if table.has(p.key) else "todo"}] {p.key:<24} {p.describe()}')
    return '\n'.join(lines)
