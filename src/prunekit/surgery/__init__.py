"""Surgery: compact a channel-pruned model into a smaller dense one."""

from .compact import HANDLERS, compact, handler

__all__ = ["HANDLERS", "compact", "handler"]
