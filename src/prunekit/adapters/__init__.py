"""Thin adapters that serve other frameworks' models with the prunekit core."""
