"""Entry point `python -m bitfit_experiments.repro_plan`; the code lives in `report/repro_plan.py`."""
from .core.errors import exit_on_usage_error
from .report.repro_plan import main

if __name__ == "__main__":
    exit_on_usage_error(main)()  # a UsageError is one line on stderr and exit code 2
