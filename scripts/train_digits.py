#!/usr/bin/env python3
"""Train a small CNN on scikit-learn's 8x8 digits: ``python -m im2colbp.digits`` from a checkout.

The example lives in the package (:mod:`im2colbp.digits`), so it also runs
from an installed im2colbp; this script runs it from the source tree, with or
without installing it::

    .venv/bin/python -m pip install scikit-learn
    .venv/bin/python scripts/train_digits.py [--epochs 30] [--seed 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from im2colbp.digits import main
except ImportError:  # not installed: use the checkout this script is in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from im2colbp.digits import main

if __name__ == "__main__":
    sys.exit(main())
