"""ffattn: shallow feed-forward networks in place of attention (arXiv 2311.10642)."""
__version__ = "0.1.0"
