"""Layer artifacts: what a run writes and reads back (run record, packs, checkpoint, evaluator, server files, atomic io, the run lock).
"""
