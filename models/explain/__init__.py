"""Saliency of a model's outputs on its source images (explainability).

Modules, each imported on use (torch and captum are imported inside functions):

- :mod:`~models.explain.gradcam`: Grad-CAM (Selvaraju et al. 2017) with captum
  on an FP32 copy of the network, thread-safe, built on first use;
- :mod:`~models.explain.layers`: the target layer per architecture
  (DenseNet: ``features.norm5``);
- :mod:`~models.explain.geometry`: undo the preprocessing's crop, pad and
  resize, so the map lies on the source's ``Rows x Columns`` grid;
- :mod:`~models.explain.display`: the source rendered as 8-bit MONOCHROME2;
- :mod:`~models.explain.saliency`: all of it for one instance and label.
"""
