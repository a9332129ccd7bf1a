"""Run every benchmark of the series side by side and print one table per topic.

Usage: ``make bench`` (installs the benchmark-only extras, Surprise and implicit, first).
The machine is shared and noisy: compare the ratios printed within one run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import als  # noqa: E402
import mf  # noqa: E402


def main() -> None:
    for title, bench in [("Gradient-trained factorization", mf), ("ALS", als)]:
        print(f"\n=== {title} ===", flush=True)
        bench.main()


if __name__ == "__main__":
    main()
