"""A fixed-size histogram of durations: bounded memory however many tasks run.

Buckets grow by a factor of sqrt(2) from 1 microsecond to about 3 minutes, so a
quantile read from them (interpolating inside the bucket) falls in the bucket of
the true value, with 56 counters per histogram, whether it saw ten durations or
ten billion. Between 1 us and the last bound that means at most a factor sqrt(2)
off (41% above or 29% below; typically within 20%). The first bucket spans
(0, 1 us], so under a microsecond the estimate is only within 1 us of the truth,
at any ratio; past the last bound it lies between that bound and the largest
duration seen. Not thread-safe: the metrics record guards it.
"""

from __future__ import annotations

import bisect
import math

__all__ = ["BOUNDS", "EXPORT_BOUNDS", "Histogram"]

#: Upper bounds of the buckets, in seconds; one more bucket holds what is above.
BOUNDS: tuple[float, ...] = tuple(1e-6 * 2 ** (i / 2) for i in range(56))
_EXPORT_EVERY = 4
#: Every fourth bound (a factor of 4 apart): the buckets Prometheus is shown.
EXPORT_BOUNDS: tuple[float, ...] = BOUNDS[::_EXPORT_EVERY]


class Histogram:
    """Counts of durations per bucket, with their count, sum, minimum and maximum."""

    __slots__ = ("buckets", "count", "maximum", "minimum", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = 0.0

    def add_all(self, samples: list[float]) -> None:
        """Count a batch of durations.

        Sorting the batch (in C) and then finding each bucket's edge in it costs
        a few comparisons per sample, where finding each sample's bucket costs a
        search per sample: four times cheaper, on the tasks' hot path.
        """
        if not samples:
            return
        ordered = sorted(samples)
        buckets = self.buckets
        first = bisect.bisect_left(BOUNDS, ordered[0])
        last = min(bisect.bisect_left(BOUNDS, ordered[-1]), len(BOUNDS) - 1)
        counted = 0
        for index in range(first, last + 1):
            at_or_below = bisect.bisect_right(ordered, BOUNDS[index])
            buckets[index] += at_or_below - counted
            counted = at_or_below
        buckets[-1] += len(ordered) - counted  # above the last bound
        self.count += len(ordered)
        self.total += sum(ordered)
        self.minimum = min(self.minimum, ordered[0])
        self.maximum = max(self.maximum, ordered[-1])

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to this one."""
        for index, count in enumerate(other.buckets):
            self.buckets[index] += count
        self.count += other.count
        self.total += other.total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    def quantile(self, q: float) -> float:
        """The duration below which a fraction ``q`` of the samples fell (0.0 if none)."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for index, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                low = BOUNDS[index - 1] if index else 0.0
                high = BOUNDS[index] if index < len(BOUNDS) else self.maximum
                # Interpolate inside the bucket, clamped to what was really seen.
                estimate = low + (high - low) * (rank - seen) / count
                return min(max(estimate, self.minimum), self.maximum)
            seen += count
        return self.maximum

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, samples at or below it)`` at :data:`EXPORT_BOUNDS`, then +Inf."""
        result = []
        running = 0
        for index, count in enumerate(self.buckets[:-1]):
            running += count
            if index % _EXPORT_EVERY == 0:
                result.append((BOUNDS[index], running))
        result.append((math.inf, self.count))
        return result
