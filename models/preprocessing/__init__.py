"""Manifest-driven preprocessing: one DICOM instance to one model input ``(C, H, W) float32``.

A manifest's ``preprocessing`` list names steps, run in order after an
implicit decode. Each step is a mapping ``{step: <name>, <param>: <value>}``;
unknown steps or parameters fail validation (:func:`validate_steps`, called
by the manifest validator). Images flow between steps as ``(C, H, W)
float64``; the result is cast to float32 once, at the end.

Decode (implicit)
    First frame's *stored* values: ``(1, H, W)`` for MONOCHROME1/2,
    ``(3, H, W)`` R, G, B for RGB/YBR (:mod:`.decode`). No rescale, LUT or
    inversion happens unless a step asks for it.

Vocabulary (defaults in parentheses):

``modality_lut``
    Modality LUT Sequence, else Rescale Slope/Intercept (CT: stored -> HU).
    PS3.3 C.11.1. Colour images pass unchanged.
``voi_lut``: ``index`` (0), ``prefer_lut`` (true)
    VOI LUT Sequence item or Window Center/Width number ``index``, as
    ``pydicom.pixels.apply_voi_lut``. PS3.3 C.11.2. Instances without that
    VOI, and colour images, pass unchanged.
    *A manifest switch:* omit the step to ignore the instance's VOI
    (torchxrayvision's default, ``read_xray_dcm(voi_lut=False)``: the model
    was trained on stored values). Add it when the model was trained on
    display-rendered images (PNG/JPEG exports of windowed DICOM, e.g. MURA),
    or when a site's modality stores raw-detector values whose useful range
    is only given by the window (the VOI then carries the contrast the
    training images had); torchxrayvision's ``read_xray_dcm(voi_lut=True)``
    is ``voi_lut`` before ``invert_monochrome1``/``normalize`` with
    ``bits_stored``.
``invert_monochrome1``: ``reference`` (required), with ``low``/``high``,
    ``fallback``, ``voi_index`` as for range sources.
    MONOCHROME1 only: ``x -> low + high - x`` (``image_max``: ``max - x``).
``normalize``: ``source`` (required), ``to`` ([0, 1]), ``clip`` (false),
    ``low``/``high`` (``fixed`` only), ``fallback`` (image_minmax) and
    ``voi_index`` (0) (``voi_range`` only).
    Linear map of ``[low, high]`` onto ``to``.
    Range sources (:mod:`.ranges`): ``bits_stored`` (``[0, 2**BitsStored-1]``
    unsigned, signed range otherwise), ``voi_range`` (output range of the
    instance's VOI; ``fallback`` when it has none), ``image_minmax``,
    ``image_max`` (inversion only), ``fixed``.
``windows``: ``windows`` (list of ``{center, width, name}``, required), ``to`` ([0, 1]),
    ``function`` (linear_exact | linear | sigmoid)
    One output channel per window from one input channel; clipped.
``gray_to_rgb``
    ``(1, H, W) -> (3, H, W)``; colour images pass unchanged.
``center_crop``: ``size`` (largest square), ``offsets`` (xrv | torchvision)
``pad_square``: ``value`` (0), ``align`` (center | start)
``resize``: ``size`` (N or [H, W], required), ``engine`` (skimage | pil | torch, required)
    skimage: ``order``, ``anti_aliasing``, ``border``, ``cval``, ``clip``;
    pil: ``interpolation`` (nearest, bilinear, bicubic, box = area, hamming,
    lanczos = antialiased), ``pixel_type`` (float | uint8);
    torch: ``interpolation`` (nearest, nearest_exact, bilinear, bicubic,
    area), ``antialias``, ``align_corners``. See :mod:`.resize`.
``scale``: ``mode`` (keras_tf | keras_torch | keras_caffe | imagenet | mean_std | affine),
    ``mean``/``std`` (mean_std), ``scale``/``offset`` (affine). See :mod:`.scaling`.

Examples (the shipped manifests)::

    # torchxrayvision densenet121-res224-all: read_xray_dcm -> XRayCenterCrop -> XRayResizer(224)
    - {step: invert_monochrome1, reference: bits_stored}
    - {step: normalize, source: bits_stored, to: [-1024, 1024]}
    - {step: center_crop, offsets: xrv}
    - {step: resize, size: 224, engine: skimage, border: constant}

Layout (NCHW/NHWC) is not a step: :mod:`models.contract` lays out the batch.
"""

from __future__ import annotations

from .decode import decode_first_frame
from .pipeline import Preprocessor, validate_steps
from .steps import StepRegistry, default_steps

__all__ = [
    "Preprocessor",
    "StepRegistry",
    "decode_first_frame",
    "default_steps",
    "validate_steps",
]
