"""weakshot: weak-shot semantic segmentation (SimFormer) as a command-line tool."""

__version__ = "0.1.0"
