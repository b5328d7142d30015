#!/usr/bin/env python
"""Instruction-tune a causal LM with BitFit or full fine-tuning. `python run_instruct.py -h` lists every flag."""
from bitfit_experiments.instruct_cli import main

if __name__ == "__main__":
    main()
