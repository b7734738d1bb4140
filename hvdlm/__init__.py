"""hvdlm: GPT training with Horovod data parallelism."""
__version__ = "0.1.0"
