"""Types shared by the preprocessing modules."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

FloatImage = npt.NDArray[np.float64]
"""An image between steps: ``(C, H, W) float64``."""

Step = Callable[[FloatImage, Dataset], FloatImage]
"""A configured step: takes the image and the instance (for header values), returns the image."""
