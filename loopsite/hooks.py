"""Hooks: how an app calls into an app to its right without importing it.

Dependencies go one way (`loopsite` <- `runs` <- `reviews`). Where `runs/` needs an answer that only
`reviews/` knows (a batch's cycle, the latest handoff, a run's approved reviews, the gate's comparison),
it declares a hook with what to answer until one is provided, and `reviews/apps.py` provides the
function when the app loads:

    # runs/work.py                                # reviews/apps.py, in ReviewsConfig.ready()
    open_cycle = Hook(default=lambda batch: None)  work.open_cycle.provide(Cycle.objects.create_for_batch)
    ...
    open_cycle(batch)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Hook:
    def __init__(self, *, default: Callable[..., Any]):
        self.default = default
        self.function: Callable[..., Any] | None = None

    def provide(self, function: Callable[..., Any]) -> None:
        self.function = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return (self.function or self.default)(*args, **kwargs)
