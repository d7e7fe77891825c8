"""Dynamic batching across studies inside one worker process.

One :class:`DynamicBatcher` per model owns its backend: analyses running in
the worker's threads hand it single preprocessed images, it runs them in
batches (STAT images first) and gives each image its own row of scores back.
"""

from workers.batching.batcher import DynamicBatcher
from workers.batching.stats import BatchStats

__all__ = ["BatchStats", "DynamicBatcher"]
