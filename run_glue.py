#!/usr/bin/env python
"""Fine-tune on GLUE with BitFit and its baselines. `python run_glue.py -h` lists every flag."""
from bitfit_experiments.cli import main

if __name__ == "__main__":
    main()
