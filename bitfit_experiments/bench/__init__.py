"""Layer bench: speed and memory measurements (benchmark, step costs, inference).
"""
