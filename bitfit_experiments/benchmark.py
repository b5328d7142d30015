"""Entry point `python -m bitfit_experiments.benchmark`; the code lives in `bench/benchmark.py`."""
from .bench.benchmark import main

if __name__ == "__main__":
    main()
