from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from models.preprocessing.xrv import center_crop, preprocess_xrv, resize, xrv_normalize
from models.preprocessing.pixels import display_image


def test_normalize_is_torchxrayvision_formula() -> None:
    img = np.array([[0, 127.5, 255]], dtype=np.float32)
    expected = (2 * (img / 255.0) - 1.0) * 1024  # xrv.datasets.normalize(img, 255)
    np.testing.assert_allclose(xrv_normalize(img, 255), expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(xrv_normalize(img, 255)[0], [-1024, 0, 1024], atol=1e-4)
    with pytest.raises(ValueError, match="higher than expected"):
        xrv_normalize(img, 100)


def test_center_crop_matches_xrv_offsets() -> None:
    img = np.arange(5 * 8, dtype=np.float32).reshape(5, 8)
    # XRayCenterCrop: startx = 8 // 2 - 5 // 2 = 2, starty = 5 // 2 - 5 // 2 = 0
    np.testing.assert_array_equal(center_crop(img), img[0:5, 2:7])


def test_resize_keeps_constant_and_mean() -> None:
    const = np.full((1000, 1000), 3.5, dtype=np.float32)
    np.testing.assert_allclose(resize(const, 224), 3.5, atol=1e-4)
    ramp = np.tile(np.linspace(-1024, 1024, 896, dtype=np.float32), (896, 1))
    assert abs(float(resize(ramp, 224).mean()) - float(ramp.mean())) < 1.0


def test_monochrome1_chest_is_inverted_and_scaled(cr_path: Path) -> None:
    ds = dcmread(cr_path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image = display_image(ds)
    assert image.shape == (1955, 1841) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    # MONOCHROME1: high stored values are dark. After inversion the brightest stored
    # pixel must be among the darkest displayed ones.
    raw = ds.pixel_array
    assert image.flat[int(np.argmax(raw))] < image.flat[int(np.argmin(raw))]


def test_j2k_lossless_decodes_to_the_same_image(cr_path: Path, cr_j2k_path: Path) -> None:
    np.testing.assert_array_equal(
        display_image(dcmread(cr_path)), display_image(dcmread(cr_j2k_path))
    )


def test_model_input_shape_and_range(cr_path: Path) -> None:
    x = preprocess_xrv(display_image(dcmread(cr_path)))
    assert x.shape == (1, 1, 224, 224) and x.dtype == np.float32
    assert -1024.0 <= x.min() < 0 < x.max() <= 1024.0
