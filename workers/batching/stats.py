"""Counters of a :class:`~workers.batching.DynamicBatcher`: how full its batches were, how busy."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BatchStats:
    """What a batcher has run since it started.

    Attributes
    ----------
    batches : int
        Backend calls (successful or not).
    images : int
        Images in those calls.
    failed_batches : int
        Calls the backend failed (every image of such a batch failed with it).
    busy_seconds : float
        Seconds spent inside the backend, summed over calls.
    histogram : dict of int to int
        Batch size to the number of calls of that size.
    """

    batches: int = 0
    images: int = 0
    failed_batches: int = 0
    busy_seconds: float = 0.0
    histogram: dict[int, int] = field(default_factory=dict)

    @property
    def mean_batch_size(self) -> float:
        """Images per backend call (0.0 before the first call)."""
        return self.images / self.batches if self.batches else 0.0

    def added(self, size: int, seconds: float, failed: bool) -> BatchStats:
        """These counters with one more backend call of ``size`` images taking ``seconds``."""
        histogram = dict(self.histogram)
        histogram[size] = histogram.get(size, 0) + 1
        return BatchStats(
            self.batches + 1,
            self.images + size,
            self.failed_batches + int(failed),
            self.busy_seconds + seconds,
            histogram,
        )
