"""DiffMean-clamp: DiffMean's direction, steering by clamping instead of adding.

Detection is DiffMean's. Steering sets the residual stream's projection on the unit direction to
strength = factor × the concept's max detection activation, at every position (the "clamp" mode
of `axflow.protocol.steering`), rather than adding that much of the direction on top of whatever
the stream already holds: the concept's feature is pinned, not pushed.
"""

from __future__ import annotations

from axflow.methods import register
from axflow.methods.diffmean import DiffMean


@register("diffmean_clamp")
class DiffMeanClamp(DiffMean):
    steering = "clamp"
