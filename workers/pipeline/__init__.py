"""One analysis through its model: load and order the images, preprocess, infer, aggregate.

Pure functions of files and a loaded model, with no Celery in them, so tests
and benchmarks call them directly. The tasks in :mod:`workers.tasks` wrap
them with ledger transitions.
"""
