"""Layer core: data, batching, model, selection, trainer, metrics, features and the run configuration.
"""
