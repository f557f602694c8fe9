"""Shared test helpers: settings built in code, a scriptable servicer, real servers."""
