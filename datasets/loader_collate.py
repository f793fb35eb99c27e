"""A data loader whose collate function is wrapped (edge lists built in the workers, the two SSL views batched
together, ...), built so that the wrapper survives Lightning re-creating the loader."""
from typing import Callable, Optional

from torch.utils.data import BatchSampler, DataLoader

CollateWrapper = Callable[[Callable], Callable]


def with_collate(loader: DataLoader, wrap: Optional[CollateWrapper]) -> DataLoader:
    """The same loader collating with ``wrap(loader.collate_fn)`` (None: the loader unchanged).

    PyG's DataLoader sets its own collate function and drops a ``collate_fn`` argument, and Lightning re-creates a
    loader from its constructor arguments to add a distributed sampler; a collate function assigned afterwards would
    be lost there. So the result is a plain torch DataLoader with the wrapped collate among its arguments."""
    if wrap is None:
        return loader
    common = dict(num_workers=loader.num_workers, collate_fn=wrap(loader.collate_fn), pin_memory=loader.pin_memory,
                  persistent_workers=loader.persistent_workers, worker_init_fn=loader.worker_init_fn,
                  prefetch_factor=loader.prefetch_factor)
    if type(loader.batch_sampler) is BatchSampler:
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                          drop_last=loader.drop_last, **common)
    return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, **common)
