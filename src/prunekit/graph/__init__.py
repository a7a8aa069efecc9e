"""Tracing and dependency groups: which channel indices of which parameters go together."""

from .groups import Group, Structure, build, unit_scores
from .channels import Graph, Member, Note
from .tracer import trace

__all__ = ["Graph", "Group", "Member", "Note", "Structure", "build", "trace", "unit_scores"]
