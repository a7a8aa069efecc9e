"""Surgery: compact a channel-pruned model into a smaller dense one."""

from . import recurrent as _recurrent  # noqa: F401  (registers the recurrent handlers)
from .compact import HANDLERS, compact, handler

__all__ = ["HANDLERS", "compact", "handler"]
