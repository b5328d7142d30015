"""Entry point `python -m bitfit_experiments.tables`; the code lives in `report/tables.py`."""
from .core.errors import exit_on_usage_error
from .report.tables import main

if __name__ == "__main__":
    exit_on_usage_error(main)()  # a UsageError is one line on stderr and exit code 2
