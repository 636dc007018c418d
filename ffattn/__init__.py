"""ffattn: shallow feed-forward networks in place of attention (arXiv 2311.10642)."""
__version__ = "0.1.0"

import warnings as _warnings

# tqdm.auto warns when ipywidgets is missing and falls back to text bars, which is fine here.
_warnings.filterwarnings("ignore", message="IProgress not found")
