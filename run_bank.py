#!/usr/bin/env python
"""Train several BitFit runs as one bias bank. `python run_bank.py -h` explains; members are run_glue.py flags."""
from bitfit_experiments.bank import main

if __name__ == "__main__":
    main()
