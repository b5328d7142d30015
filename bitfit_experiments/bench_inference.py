"""Entry point `python -m bitfit_experiments.bench_inference`; the code lives in `bench/bench_inference.py`."""
from .bench.bench_inference import main

if __name__ == "__main__":
    main()
