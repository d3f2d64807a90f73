"""cachesvc: a semantic cache server for LLM applications."""

__version__ = "0.1.0"
