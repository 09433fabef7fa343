"""Root pytest configuration: leave out what needs an optional extra that is not installed.

``im2colbp/dask.py`` (its doctests) and ``docs/beyond-one-machine.md`` need the
``dask`` extra (``pip install ".[dask]"``); without it they are not collected,
just as ``tests/test_dask.py`` skips itself with ``pytest.importorskip``.
"""

collect_ignore = []
try:
    import dask.array  # noqa: F401
    import distributed  # noqa: F401
except ImportError:
    collect_ignore += ["im2colbp/dask.py", "docs/beyond-one-machine.md"]
