"""Preprocessing steps, one by one, against their documented formulas and libraries.

Test files are pydicom's and pydicom-data's: RG1_UNCR.dcm (adult chest CR,
MONOCHROME1), RG3_UNCR.dcm (CR extremity), 693_UNCR.dcm (CT, Rescale -1024),
mlut_18.dcm (Modality LUT Sequence), vlut_04.dcm (VOI LUT Sequence),
SC_rgb.dcm (RGB), emri_small.dcm (10-frame MR).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.tag import Tag
from skimage.transform import resize as sk_resize

from dicom_node.core.errors import PixelDataError
from models.preprocessing import Preprocessor, StepRegistry, default_steps, validate_steps
from models.preprocessing.decode import decode_first_frame
from models.preprocessing.geometry import center_crop, pad_square
from models.preprocessing.intensity import window
from models.preprocessing.params import StepParams
from models.preprocessing.ranges import RangeSpec, voi_range
from models.registry import ModelRegistry


def sample(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def synthetic(
    pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, **attrs: Any
) -> Dataset:
    ds = Dataset()
    ds.set_pixel_data(pixels, photometric, bits)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def run(steps: list[dict[str, Any]], ds: Dataset) -> np.ndarray:
    return Preprocessor(steps)(ds)


RAMP = np.array([[0, 1000, 2000, 4095]], dtype=np.uint16)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"step": "sharpen"}], "unknown step 'sharpen'"),
        ([{"stp": "resize"}], "missing 'step'"),
        ([{"step": "gray_to_rgb", "channels": 3}], r"unknown parameter\(s\) \['channels'\]"),
        ([{"step": "resize", "size": 224}], "missing required parameter 'engine'"),
        ([{"step": "resize", "size": 224, "engine": "cv2"}], "engine: 'cv2' is not one of"),
        ([{"step": "resize", "size": [0, 3], "engine": "pil", "interpolation": "nearest"}], "size"),
        (
            [{"step": "resize", "size": 9, "engine": "skimage", "interpolation": "bilinear"}],
            "interpolation: not allowed for skimage",
        ),
        (
            [
                {
                    "step": "resize",
                    "size": 9,
                    "engine": "pil",
                    "interpolation": "bilinear",
                    "order": 1,
                }
            ],
            "order: not allowed for pil",
        ),
        (
            [{"step": "resize", "size": 9, "engine": "torch", "interpolation": "lanczos"}],
            "interpolation: 'lanczos' is not one of",
        ),
        (
            [
                {
                    "step": "resize",
                    "size": 9,
                    "engine": "torch",
                    "interpolation": "area",
                    "antialias": True,
                }
            ],
            "need bilinear or bicubic",
        ),
        ([{"step": "resize", "size": 9, "engine": "skimage", "order": 7}], "must be <= 5"),
        ([{"step": "normalize", "source": "fixed", "low": 5}], "missing required parameter 'high'"),
        ([{"step": "normalize", "source": "fixed", "low": 5, "high": 5}], "needs low < high"),
        ([{"step": "normalize", "source": "bits_stored", "low": 0}], "low: not allowed unless"),
        ([{"step": "normalize", "source": "image_max"}], "source: 'image_max' is not one of"),
        ([{"step": "normalize", "source": "bits_stored", "to": [1, 0]}], "needs lo < hi"),
        ([{"step": "normalize", "source": "bits_stored", "clip": 1}], "must be true or false"),
        ([{"step": "invert_monochrome1"}], "missing required parameter 'reference'"),
        ([{"step": "windows", "windows": []}], "non-empty list"),
        ([{"step": "windows", "windows": [{"center": 40, "width": 0}]}], r"windows\[0\].width"),
        (
            [{"step": "windows", "windows": [{"center": 40, "width": 80, "level": 1}]}],
            "unknown key",
        ),
        ([{"step": "scale", "mode": "keras"}], "mode: 'keras' is not one of"),
        (
            [{"step": "scale", "mode": "keras_tf", "scale": 2}],
            "scale: not allowed with mode keras_tf",
        ),
        ([{"step": "scale", "mode": "mean_std", "mean": 0.5, "std": 0}], "must be > 0"),
        ([{"step": "center_crop", "mode": "xrv"}], r"unknown parameter\(s\) \['mode'\]"),
        ([{"step": "voi_lut", "index": -1}], "must be >= 0"),
        ("resize", "must be a list"),
    ],
)
def test_validate_steps_rejects(steps: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_steps(steps)


def test_validate_steps_names_the_position() -> None:
    with pytest.raises(ValueError, match=r"preprocessing\[1\] \(resize\)"):
        validate_steps([{"step": "gray_to_rgb"}, {"step": "resize", "size": 2, "engine": "no"}])


def test_shipped_manifests_validate() -> None:
    registry = ModelRegistry.load(None)
    for manifest in registry.manifests():
        validate_steps(manifest.preprocessing)


def test_registry_is_an_immutable_object() -> None:
    first, second = default_steps(), default_steps()
    assert first is not second and sorted(first) == sorted(second)
    assert sorted(first) == [
        "center_crop",
        "gray_to_rgb",
        "invert_monochrome1",
        "modality_lut",
        "normalize",
        "pad_square",
        "resize",
        "scale",
        "voi_lut",
        "windows",
    ]
    with pytest.raises(TypeError):
        first["extra"] = first["scale"]  # type: ignore[index]

    def make_negate(params: StepParams) -> Any:
        return lambda image, ds: -image

    extended = first.with_step("negate", make_negate)
    assert isinstance(extended, StepRegistry) and "negate" in extended and "negate" not in first
    ds = synthetic(RAMP)
    assert run_with(extended, [{"step": "negate"}], ds).tolist() == [[[0, -1000, -2000, -4095]]]
    with pytest.raises(ValueError, match="unknown step 'negate'"):
        validate_steps([{"step": "negate"}])


def run_with(registry: StepRegistry, steps: list[dict[str, Any]], ds: Dataset) -> np.ndarray:
    return Preprocessor(steps, registry)(ds)


# --- decode -------------------------------------------------------------------------------


def test_decode_gives_first_frame_stored_values() -> None:
    ds = dcmread(sample("RG1_UNCR.dcm"))
    image = decode_first_frame(ds)
    assert image.shape == (1, 1955, 1841) and image.dtype == np.float64
    np.testing.assert_array_equal(image[0], ds.pixel_array)
    multi = dcmread(sample("emri_small.dcm"))
    np.testing.assert_array_equal(decode_first_frame(multi)[0], multi.pixel_array[0])


def test_decode_rgb_is_channels_first() -> None:
    ds = dcmread(sample("SC_rgb.dcm"))
    image = decode_first_frame(ds)
    assert image.shape == (3, 100, 100)
    np.testing.assert_array_equal(np.moveaxis(image, 0, -1), ds.pixel_array)


def test_j2k_lossless_decodes_to_the_same_image() -> None:
    steps = [{"step": "invert_monochrome1", "reference": "bits_stored"}]
    np.testing.assert_array_equal(
        run(steps, dcmread(sample("RG1_UNCR.dcm"))), run(steps, dcmread(sample("RG1_J2KR.dcm")))
    )


def test_undecodable_pixels_give_class_and_transfer_syntax_not_values() -> None:
    ds = dcmread(sample("RG1_J2KR.dcm"))
    ds.PatientName = "Doe^Jane"
    ds.PixelData = b"\xff\x4f\xff\x51" + b"\x00" * 60  # a broken JPEG 2000 codestream
    with pytest.raises(PixelDataError) as caught:
        Preprocessor([{"step": "gray_to_rgb"}])(ds)
    text = str(caught.value)
    assert "cannot decode pixel data" in text and "1.2.840.10008.1.2.4.90" in text
    assert "Doe" not in text


def test_unsupported_photometric_and_missing_pixels() -> None:
    ds = dcmread(sample("OBXXXX1A.dcm"))
    with pytest.raises(PixelDataError, match="PALETTE COLOR is not supported"):
        Preprocessor([{"step": "gray_to_rgb"}])(ds)
    header = dcmread(sample("RG1_UNCR.dcm"), stop_before_pixels=True)
    with pytest.raises(PixelDataError, match="no pixel data"):
        Preprocessor([{"step": "gray_to_rgb"}])(header)


# --- modality and VOI -----------------------------------------------------------------------


def test_modality_lut_rescale_gives_hu() -> None:
    ds = dcmread(sample("693_UNCR.dcm"))
    hu = run([{"step": "modality_lut"}], ds)
    np.testing.assert_array_equal(hu[0], ds.pixel_array.astype(np.float32) - 1024)


def test_modality_lut_sequence_matches_pydicom() -> None:
    ds = dcmread(sample("mlut_18.dcm"))
    ours = run([{"step": "modality_lut"}], ds)
    np.testing.assert_array_equal(ours[0], apply_modality_lut(ds.pixel_array, ds))


def test_voi_lut_sequence_matches_pydicom_and_its_range() -> None:
    ds = dcmread(sample("vlut_04.dcm"))
    ours = run([{"step": "voi_lut"}], ds)
    np.testing.assert_array_equal(ours[0], apply_voi_lut(ds.pixel_array, ds, index=0))
    lut = np.asarray(ds.VOILUTSequence[0].LUTData)
    assert voi_range(ds) == (float(lut.min()), float(lut.max()))


def test_voi_window_matches_pydicom_and_absent_voi_is_a_no_op() -> None:
    ds = dcmread(sample("RG1_UNCR.dcm"))
    ours = run([{"step": "voi_lut"}], ds)
    expected = apply_voi_lut(ds.pixel_array, ds, index=0)
    np.testing.assert_allclose(ours[0], expected, rtol=1e-6)
    assert voi_range(ds) == (0.0, 2.0**15 - 1)  # pydicom's windowed output range
    plain = synthetic(RAMP)
    assert voi_range(plain) is None
    np.testing.assert_array_equal(run([{"step": "voi_lut"}], plain), RAMP[None])


def raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> Dataset:
    """Put bytes into a header as a careless modality writes them, without pydicom's checks."""
    tag = Tag(keyword)
    value += b" " * (len(value) % 2)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return ds


MURA_VOI = [
    {"step": "modality_lut"},
    {"step": "voi_lut"},
    {"step": "normalize", "source": "voi_range", "fallback": "image_minmax"},
]


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "reason"),
    [
        ("WindowCenter", "DS", b"abc\\def", "WindowCenter (0028,1050) is not a number"),
        ("WindowCenter", "DS", b"40\\50", "WindowCenter (0028,1050) and WindowWidth (0028,1051)"),
        ("WindowCenter", "CS", b"40", "WindowCenter (0028,1050) is not a number"),  # text VR
        ("WindowWidth", "DS", b"0", "WindowWidth (0028,1051) is too small for LINEAR"),
        ("WindowWidth", "DS", b"1e999", "WindowWidth (0028,1051) is not a finite number"),
        ("VOILUTFunction", "CS", b"GAMMA", "VOILUTFunction (0028,1056) has an unknown value"),
        ("RescaleSlope", "DS", b"", "RescaleSlope (0028,1053) is empty"),
        ("RescaleIntercept", "LO", b"Doe^Jane", "RescaleIntercept (0028,1052) is not a number"),
    ],
)
def test_malformed_voi_and_rescale_are_named_reasons(
    keyword: str, vr: str, value: bytes, reason: str
) -> None:
    ds = synthetic(RAMP, WindowCenter=1000, WindowWidth=1000, RescaleSlope=1, RescaleIntercept=0)
    with pytest.raises(PixelDataError) as caught:
        run(MURA_VOI, raw(ds, keyword, vr, value))
    assert reason in str(caught.value)
    assert "Doe" not in str(caught.value) and "abc" not in str(caught.value)


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda ds: delattr(ds, "Rows"), "Rows (0028,0010) is missing"),
        (lambda ds: raw(ds, "Columns", "LO", b"512"), "Columns (0028,0011) is not an integer"),
        (lambda ds: raw(ds, "BitsAllocated", "US", b"\x0c\x00"), "BitsAllocated (0028,0100) 12"),
        (lambda ds: raw(ds, "Rows", "UL", b"\x01\x00"), "Rows (0028,0010) cannot be read"),
        (lambda ds: setattr(ds, "SamplesPerPixel", 3), "SamplesPerPixel (0028,0002) does not fit"),
        (lambda ds: setattr(ds, "NumberOfFrames", 9), "pixel data is truncated: 8 bytes, 72"),
        (lambda ds: setattr(ds, "PixelData", b""), "PixelData (7FE0,0010) is empty"),
        (
            lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", "1.2.840.10008.1.2.4.110"),
            "no decoder for transfer syntax 1.2.840.10008.1.2.4.110",
        ),
        (lambda ds: raw(ds, "PhotometricInterpretation", "CS", b"E2E-MIXED-0042"), "(invalid"),
    ],
)
def test_undecodable_headers_are_specific_reasons(spoil: Any, reason: str) -> None:
    ds = synthetic(RAMP)
    spoil(ds)
    with pytest.raises(PixelDataError) as caught:
        decode_first_frame(ds)
    assert reason in str(caught.value)
    assert "E2E" not in str(caught.value)


def test_a_constant_image_is_blank() -> None:
    with pytest.raises(PixelDataError, match=r"^image is constant \(blank\)$"):
        run([{"step": "gray_to_rgb"}], synthetic(np.full((4, 4), 9, np.uint16)))


# --- MONOCHROME1 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "extra", "expected"),
    [
        ("bits_stored", {}, [4095, 3095, 2095, 0]),  # torchxrayvision 1.5: 2**BitsStored-1 - x
        ("image_max", {}, [4095, 3095, 2095, 0]),  # Kaggle read_xray: np.amax(x) - x
        ("image_minmax", {}, [4095, 3095, 2095, 0]),
        ("fixed", {"low": 0, "high": 5000}, [5000, 4000, 3000, 905]),
        ("voi_range", {}, [4095, 3095, 2095, 0]),  # no VOI: fallback image_minmax
    ],
)
def test_invert_monochrome1_references(
    reference: str, extra: dict[str, Any], expected: list[float]
) -> None:
    step = {"step": "invert_monochrome1", "reference": reference, **extra}
    out = run([step], synthetic(RAMP, "MONOCHROME1"))
    np.testing.assert_array_equal(out[0, 0], expected)
    # MONOCHROME2 passes unchanged
    np.testing.assert_array_equal(run([step], synthetic(RAMP))[0, 0], RAMP[0])


def test_invert_references_differ_where_they_should() -> None:
    pixels = np.array([[100, 200, 300]], dtype=np.uint16)
    ds = synthetic(pixels, "MONOCHROME1", bits=10, WindowCenter=250, WindowWidth=100)

    def invert(reference: str, **extra: Any) -> list[float]:
        return run([{"step": "invert_monochrome1", "reference": reference, **extra}], ds)[
            0, 0
        ].tolist()

    assert invert("bits_stored") == [923, 823, 723]  # 1023 - x
    assert invert("image_max") == [200, 100, 0]  # 300 - x
    assert invert("image_minmax") == [300, 200, 100]  # 100 + 300 - x
    assert invert("voi_range") == [923, 823, 723]  # pydicom window output [0, 1023]
    signed = synthetic(np.array([[-2048, 0, 2047]], dtype=np.int16), "MONOCHROME1", bits=12)
    out = run([{"step": "invert_monochrome1", "reference": "bits_stored"}], signed)
    assert out[0, 0].tolist() == [2047, -1, -2048]  # -2048 + 2047 - x


def test_chest_cr_is_inverted() -> None:
    ds = dcmread(sample("RG1_UNCR.dcm"))
    out = run([{"step": "invert_monochrome1", "reference": "bits_stored"}], ds)
    raw = ds.pixel_array
    assert out[0].flat[int(np.argmax(raw))] < out[0].flat[int(np.argmin(raw))]


# --- normalize -----------------------------------------------------------------------------


def test_normalize_bits_stored_is_torchxrayvision_formula() -> None:
    out = run(
        [{"step": "normalize", "source": "bits_stored", "to": [-1024, 1024]}], synthetic(RAMP)
    )
    maxval = 4095.0
    expected = (2 * (RAMP.astype(np.float32) / maxval) - 1.0) * 1024  # xrv.utils.normalize
    np.testing.assert_allclose(out[0], expected, rtol=0, atol=1e-3)
    assert out[0, 0, 0] == -1024 and out[0, 0, -1] == 1024


def test_normalize_sources() -> None:
    ds = synthetic(RAMP, WindowCenter=1000, WindowWidth=1000)

    def norm(**step: Any) -> list[float]:
        return run([{"step": "normalize", **step}], ds)[0, 0].tolist()

    assert norm(source="image_minmax", to=[0, 4095]) == RAMP[0].tolist()
    assert norm(source="fixed", low=0, high=2000, to=[0, 1], clip=True) == [0, 0.5, 1, 1]
    assert norm(source="fixed", low=0, high=2000) == pytest.approx([0, 0.5, 1, 2.0475])
    assert norm(source="voi_range", to=[0, 4095]) == RAMP[0].tolist()  # window output [0, 4095]
    with pytest.raises(PixelDataError, match=r"image is constant \(blank\)"):  # before any step
        run(
            [{"step": "normalize", "source": "image_minmax"}],
            synthetic(np.zeros((2, 2), np.uint16)),
        )
    spec = RangeSpec("image_minmax")  # a step that sees a constant image after a crop
    with pytest.raises(PixelDataError, match="constant image"):
        spec.resolve(np.zeros((1, 2, 2)), ds)


# --- windows -------------------------------------------------------------------------------


def test_windows_math_linear_exact() -> None:
    hu = np.array([-1000.0, 0.0, 20.0, 40.0, 60.0, 80.0, 1000.0])
    np.testing.assert_allclose(window(hu, 40, 80), [0, 0, 0.25, 0.5, 0.75, 1, 1])
    np.testing.assert_allclose(window(hu, 80, 200), [0, 0.1, 0.2, 0.3, 0.4, 0.5, 1])
    np.testing.assert_allclose(
        window(np.array([-800.0, 600.0, 2000.0, 3000.0]), 600, 2800), [0, 0.5, 1, 1]
    )
    np.testing.assert_allclose(window(hu, 40, 80, to=(-1, 1)), [-1, -1, -0.5, 0, 0.5, 1, 1])


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom(function: str) -> None:
    values = np.linspace(-200, 300, 1001).reshape(1, -1)
    pixels = np.zeros((1, 1001), dtype=np.uint16)
    ds = synthetic(pixels, bits=12, WindowCenter=40, WindowWidth=80, VOILUTFunction=function)
    expected = apply_voi_lut(values.copy(), ds, index=0, prefer_lut=False) / 4095.0
    ours = window(values, 40, 80, function.lower())  # type: ignore[arg-type]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_windows_step_on_head_ct_gives_one_channel_each() -> None:
    ds = dcmread(sample("693_UNCR.dcm"))
    steps: list[dict[str, Any]] = [
        {"step": "modality_lut"},
        {
            "step": "windows",
            "windows": [
                {"name": "brain", "center": 40, "width": 80},
                {"name": "subdural", "center": 80, "width": 200},
                {"name": "bone", "center": 600, "width": 2800},
            ],
        },
    ]
    out = run(steps, ds)
    hu = ds.pixel_array.astype(np.float64) - 1024
    assert out.shape == (3, 512, 512)
    for channel, (c, w) in enumerate([(40, 80), (80, 200), (600, 2800)]):
        expected = np.clip(hu, c - w // 2, c + w // 2)  # the RSNA 2019 kernels' window_image
        expected = (expected - (c - w // 2)) / w
        np.testing.assert_allclose(out[channel], expected, atol=1e-6)
    with pytest.raises(PixelDataError, match=r"preprocessing\[0\] \(windows\).*one channel"):
        run(steps[1:], dcmread(sample("SC_rgb.dcm")))


# --- geometry ------------------------------------------------------------------------------


def test_center_crop_offsets() -> None:
    img = np.arange(5 * 8, dtype=np.float64).reshape(1, 5, 8)
    # XRayCenterCrop: startx = 8 // 2 - 5 // 2 = 2
    np.testing.assert_array_equal(center_crop(img), img[:, 0:5, 2:7])
    odd = np.arange(7 * 7, dtype=np.float64).reshape(1, 7, 7)
    # (7 - 4) / 2 = 1.5: xrv 7 // 2 - 4 // 2 = 1, torchvision round(1.5) = 2
    np.testing.assert_array_equal(center_crop(odd, (4, 4), "xrv"), odd[:, 1:5, 1:5])
    np.testing.assert_array_equal(center_crop(odd, (4, 4), "torchvision"), odd[:, 2:6, 2:6])
    with pytest.raises(PixelDataError, match="larger than the image"):
        center_crop(odd, (8, 8))


def test_pad_square() -> None:
    img = np.ones((1, 2, 5))
    out = pad_square(img, value=-1)
    assert out.shape == (1, 5, 5)
    assert out[0, :, 0].tolist() == [-1, 1, 1, -1, -1]
    assert pad_square(img, align="start")[0, :, 0].tolist() == [1, 1, 0, 0, 0]


def test_gray_to_rgb() -> None:
    out = run([{"step": "gray_to_rgb"}], synthetic(RAMP))
    assert out.shape == (3, 1, 4)
    assert (out == out[0]).all()
    rgb = dcmread(sample("SC_rgb.dcm"))
    np.testing.assert_array_equal(run([{"step": "gray_to_rgb"}], rgb), decode_first_frame(rgb))


# --- resize --------------------------------------------------------------------------------

SOURCE = np.random.default_rng(7).uniform(0, 255, size=(1, 61, 83))


def resize_step(engine: str, size: Any = (23, 31), **params: Any) -> list[dict[str, Any]]:
    return [{"step": "resize", "size": list(size), "engine": engine, **params}]


def synthetic_float(image: np.ndarray) -> Dataset:
    """A Dataset whose stored values are ``image`` rounded (values 0..255)."""
    return synthetic(np.rint(image[0]).astype(np.uint16), bits=8)


@pytest.mark.parametrize(
    ("name", "pil_filter"),
    [
        ("nearest", Image.Resampling.NEAREST),
        ("bilinear", Image.Resampling.BILINEAR),
        ("bicubic", Image.Resampling.BICUBIC),
        ("box", Image.Resampling.BOX),
        ("area", Image.Resampling.BOX),
        ("hamming", Image.Resampling.HAMMING),
        ("lanczos", Image.Resampling.LANCZOS),
        ("antialiased", Image.Resampling.LANCZOS),
    ],
)
def test_pil_resize_equals_pillow(name: str, pil_filter: Image.Resampling) -> None:
    ds = synthetic_float(SOURCE)
    stored = np.rint(SOURCE[0])
    for size in [(23, 31), (150, 120)]:  # down and up
        target = (size[1], size[0])
        ours = run(resize_step("pil", size, interpolation=name), ds)
        pillow = np.asarray(Image.fromarray(stored.astype(np.float32)).resize(target, pil_filter))
        np.testing.assert_array_equal(ours[0], pillow)
        ours8 = run(resize_step("pil", size, interpolation=name, pixel_type="uint8"), ds)
        pillow8 = np.asarray(Image.fromarray(stored.astype(np.uint8)).resize(target, pil_filter))
        np.testing.assert_array_equal(ours8[0], pillow8)


def test_pil_uint8_rgb_equals_pillow_rgb() -> None:
    ds = synthetic_float(SOURCE)
    steps = [
        {"step": "gray_to_rgb"},
        *resize_step("pil", interpolation="bilinear", pixel_type="uint8"),
    ]
    rgb = np.repeat(np.rint(SOURCE[0]).astype(np.uint8)[..., None], 3, axis=-1)
    pillow = np.asarray(Image.fromarray(rgb).resize((31, 23), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(run(steps, ds), np.moveaxis(pillow, -1, 0))


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"border": "constant"},
        {"order": 0},
        {"order": 3, "anti_aliasing": False, "border": "edge"},
    ],
)
def test_skimage_resize_equals_skimage(params: dict[str, Any]) -> None:
    ds = synthetic_float(SOURCE)
    stored = np.rint(SOURCE)
    ours = run(resize_step("skimage", **params), ds)
    kwargs = {"mode": params.get("border", "reflect"), **params}
    kwargs.pop("border", None)
    expected = sk_resize(stored, (1, 23, 31), preserve_range=True, **kwargs)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "mode", "antialias"),
    [
        ("nearest", "nearest", False),
        ("nearest_exact", "nearest-exact", False),
        ("bilinear", "bilinear", False),
        ("bilinear", "bilinear", True),
        ("bicubic", "bicubic", True),
        ("area", "area", False),
    ],
)
def test_torch_resize_equals_interpolate(name: str, mode: str, antialias: bool) -> None:
    ds = synthetic_float(SOURCE)
    params: dict[str, Any] = {"interpolation": name}
    if antialias:
        params["antialias"] = True
    ours = run(resize_step("torch", **params), ds)
    tensor = torch.from_numpy(np.rint(SOURCE))[None]
    corners = False if mode in ("bilinear", "bicubic") else None
    expected = F.interpolate(
        tensor, size=(23, 31), mode=mode, align_corners=corners, antialias=antialias
    )
    np.testing.assert_allclose(ours, expected[0].numpy(), rtol=1e-6, atol=1e-4)


# --- scale ---------------------------------------------------------------------------------

RGB8 = np.random.default_rng(3).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def rgb_dataset() -> Dataset:
    return synthetic(RGB8, "RGB", bits=8)


def test_keras_modes_equal_documented_formulas() -> None:
    x = RGB8.astype(np.float64)  # (H, W, 3), channels last as Keras sees it
    ds = rgb_dataset()

    def ours(**step: Any) -> np.ndarray:
        return np.moveaxis(run([{"step": "scale", **step}], ds), 0, -1)

    # keras.applications.imagenet_utils.preprocess_input
    np.testing.assert_allclose(ours(mode="keras_tf"), x / 127.5 - 1.0, atol=1e-6)
    torch_mode = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(ours(mode="keras_torch"), torch_mode, atol=1e-5)
    caffe = x[..., ::-1] - np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(ours(mode="keras_caffe"), caffe, atol=1e-4)
    imagenet = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(ours(mode="imagenet"), imagenet, rtol=1e-6)
    np.testing.assert_allclose(ours(mode="mean_std", mean=[1, 2, 3], std=2), (x - [1, 2, 3]) / 2)
    np.testing.assert_allclose(ours(mode="affine", scale=[1, 2, 3], offset=-1), x * [1, 2, 3] - 1)


def test_scale_channel_mismatch_is_a_pixel_error() -> None:
    with pytest.raises(PixelDataError, match="3 values, the image has 1 channel"):
        run([{"step": "scale", "mode": "imagenet"}], synthetic(RAMP))


# --- whole pipelines -------------------------------------------------------------------------


def test_chest_manifest_output() -> None:
    chest = ModelRegistry.load(None).get("xrv-densenet121-res224-all")
    out = Preprocessor.from_manifest(chest)(dcmread(sample("RG1_UNCR.dcm")))
    assert out.shape == (1, 224, 224) and out.dtype == np.float32 and out.flags.c_contiguous
    assert -1024 <= out.min() < 0 < out.max() <= 1024


def test_head_ct_and_mura_manifests_output() -> None:
    registry = ModelRegistry.load(None)
    ich = registry.get("ich-headct-densenet121-rsna2019")
    out = Preprocessor.from_manifest(ich)(dcmread(sample("693_UNCR.dcm")))
    assert out.shape == ich.input.chw and out.min() >= 0 and out.max() <= 1
    mura = registry.get("mura-densenet169-abnormality")
    out = Preprocessor.from_manifest(mura)(dcmread(sample("RG3_UNCR.dcm")))
    assert out.shape == mura.input.chw
    low, high = mura.input.value_range
    assert low - 1e-3 <= out.min() and out.max() <= high + 1e-3


BYO_STEPS: list[dict[str, Any]] = [
    {"step": "modality_lut"},
    {"step": "voi_lut"},
    {"step": "invert_monochrome1", "reference": "voi_range"},
    {"step": "normalize", "source": "voi_range", "to": [0, 255]},
    {"step": "gray_to_rgb"},
    {"step": "resize", "size": [150, 150], "engine": "pil", "interpolation": "nearest"},
    {"step": "scale", "mode": "keras_tf"},
]


def test_byo_keras_pipeline() -> None:
    """NHWC RGB 150x150 Keras model: PIL nearest resize, x/127.5-1 (layout: models.contract)."""
    ds = dcmread(sample("RG3_UNCR.dcm"))
    out = Preprocessor(BYO_STEPS)(ds)
    assert out.shape == (3, 150, 150) and out.min() >= -1 and out.max() <= 1
    display = Preprocessor(BYO_STEPS[:5])(ds)
    nearest = np.asarray(Image.fromarray(display[0]).resize((150, 150), Image.Resampling.NEAREST))
    np.testing.assert_allclose(out[1], nearest / 127.5 - 1, atol=1e-6)


def test_steps_do_not_modify_the_dataset_pixels() -> None:
    ds = dcmread(sample("RG1_UNCR.dcm"))
    before = ds.pixel_array.copy()
    Preprocessor(BYO_STEPS)(ds)
    np.testing.assert_array_equal(ds.pixel_array, before)
