"""What every chapter of the book does first, in one import (as d2l's `from d2l import torch as d2l`).

    from ffattn.book import glue, row, setup
    setup()

`setup` sets the plot and table style the book uses and silences the warning tqdm gives when
ipywidgets is missing; `glue` puts a computed number into the built book's prose (myst-nb),
and in Colab or plain Jupyter, where there is no book to glue into, shows it or does nothing;
`row` is the lookup every results chapter needs: the one row of a table with given values.
"""
from __future__ import annotations

import warnings


def setup() -> None:
    """The book's look: figures at 110 dpi without top and right spines, whole cells in tables."""
    import matplotlib.pyplot as plt
    import pandas as pd
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
    plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False})
    pd.set_option("display.max_colwidth", None)


def glue(name: str, value, display: bool = True):
    """myst-nb's `glue` in the book build; elsewhere show `value` (when `display`) and go on."""
    try:
        from myst_nb import glue as book_glue
    except ImportError:  # Colab or plain Jupyter: no book to glue into
        if display:
            from IPython.display import display as show
            show(value)
        return None
    return book_glue(name, value, display=display)


_MISSING = object()


def row(df, default=_MISSING, **where):
    """The first row of `df` whose columns equal `where`, e.g. `row(df, group="encoder", size="L")`.

    With no such row: `default` if given (e.g. None for a cell a reduced grid lacks), else a
    KeyError that names the filter and the values the table has in those columns."""
    mask = None
    for column, value in where.items():
        if column not in df.columns:
            raise KeyError(f"no column {column!r}; the table has: {', '.join(map(str, df.columns))}")
        hit = df[column] == value
        mask = hit if mask is None else mask & hit
    found = df[mask] if mask is not None else df
    if len(found):
        return found.iloc[0]
    if default is not _MISSING:
        return default
    have = "; ".join(f"{c}: {', '.join(map(str, df[c].drop_duplicates().tolist()[:12]))}" for c in where)
    raise KeyError(f"no row with {where}; the table has {have}")


def use_bundle(source) -> None:
    """Unpack a workshop bundle (a path or an http(s) URL, see `python -m ffattn bundle`) where
    the cache looks, so the chapter loads its models instead of training them. None or "": nothing."""
    if source:
        from .workshop import unbundle
        unbundle(source, progress=False)
