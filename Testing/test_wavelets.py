import math

import pytest
import torch
from conftest import load_reference

from wdmcore.errors import InputShapeError
from wdmcore.wavelets import SUBBANDS, dwt3, from_coefficients, idwt3, to_coefficients


def test_dwt_matches_released_transform(reference_dir):
    ref = load_reference("dwt_haar_3d.pt")
    assert tuple(ref["subband_order"]) == SUBBANDS
    bands = dwt3(ref["input"])
    assert bands.shape == (2, 8, 1, 8, 8, 8)
    for i, name in enumerate(SUBBANDS):
        torch.testing.assert_close(bands[:, i], ref[name], atol=1e-5, rtol=0)
    torch.testing.assert_close(idwt3(bands), ref["idwt_roundtrip"], atol=1e-5, rtol=0)


def test_constant_volume_has_only_lll():
    bands = dwt3(torch.ones(1, 1, 4, 4, 4))
    torch.testing.assert_close(bands[:, 0], torch.full((1, 1, 2, 2, 2), 2 * math.sqrt(2)))
    assert bands[:, 1:].abs().max() < 1e-6


def test_sign_convention_even_minus_odd_is_positive():
    x = torch.zeros(1, 1, 2, 2, 2)
    x[..., 0] = 1.0  # even index along W is 1, odd is 0
    bands = dwt3(x)
    assert bands[0, SUBBANDS.index("LLH")].item() > 0
    assert bands[0, SUBBANDS.index("HLL")].abs().item() < 1e-7


@pytest.mark.parametrize("shape", [(2, 3, 8, 6, 4), (1, 1, 4, 12, 2), (1, 2, 16, 16, 16)])
def test_round_trip_non_cubic_and_multichannel(shape):
    x = torch.randn(shape, dtype=torch.float64)
    bands = dwt3(x)
    assert bands.shape == (
        shape[0],
        8,
        shape[1],
        shape[2] // 2,
        shape[3] // 2,
        shape[4] // 2,
    )
    torch.testing.assert_close(idwt3(bands), x)
    # Orthonormal: energy is preserved.
    torch.testing.assert_close(bands.pow(2).sum(), x.pow(2).sum())


def test_channels_are_transformed_independently():
    x = torch.randn(1, 3, 4, 4, 4)
    bands = dwt3(x)
    for c in range(3):
        torch.testing.assert_close(bands[:, :, c : c + 1], dwt3(x[:, c : c + 1]))


def test_odd_and_wrong_shapes_raise_clear_errors():
    with pytest.raises(InputShapeError, match="even"):
        dwt3(torch.zeros(1, 1, 5, 4, 4))
    with pytest.raises(InputShapeError, match="5-D"):
        dwt3(torch.zeros(4, 4, 4))
    with pytest.raises(InputShapeError, match="sub-bands"):
        idwt3(torch.zeros(1, 7, 1, 2, 2, 2))


def test_gradients_flow_through_both_directions():
    x = torch.randn(1, 1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: idwt3(dwt3(t) * 2), (x,))


def test_coefficient_representation_scales_lll():
    image = torch.rand(2, 1, 8, 8, 8) * 2 - 1
    coeffs = to_coefficients(image)
    torch.testing.assert_close(coeffs[:, 0] * 3, dwt3(image)[:, 0, 0])
    torch.testing.assert_close(coeffs[:, 1:], dwt3(image)[:, 1:, 0])
    torch.testing.assert_close(from_coefficients(coeffs), image, atol=1e-6, rtol=0)
    # LLL/3 of an image in [-1, 1] stays within 2*sqrt(2)/3.
    assert coeffs[:, 0].abs().max() <= 2 * math.sqrt(2) / 3 + 1e-6
    # Another scale is a config value, and round-trips too.
    torch.testing.assert_close(from_coefficients(to_coefficients(image, 2.0), 2.0), image, atol=1e-6, rtol=0)


def test_transform_built_first_in_inference_mode_still_supports_autograd():
    from wdmcore import wavelets

    wavelets._MATRIX_CACHE.pop((torch.float64, torch.device("cpu")), None)
    with torch.inference_mode():
        dwt3(torch.zeros(1, 1, 2, 2, 2, dtype=torch.float64))
    x = torch.randn(1, 1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: idwt3(dwt3(t)), (x,))
