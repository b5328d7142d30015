"""Layer report: tables, claims and figures over many runs, and the converged reproduction's planner.
"""
