"""iclprobe: measure how a causal language model learns a task in context."""

__version__ = "0.1.0"
