"""The application shell: the ``dicom-node`` CLI, the ``up`` supervisor and the demo.

The only layer that may import every other one.
"""
