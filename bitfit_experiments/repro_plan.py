"""Entry point `python -m bitfit_experiments.repro_plan`; the code lives in `report/repro_plan.py`."""
from .report.repro_plan import main

if __name__ == "__main__":
    main()
