"""The picture size limit (fmcgm/pictures.py): refused with the size and the fix, or scaled down."""
from __future__ import annotations

import pytest
import torch

from fmcgm.pictures import PictureTooLarge, fitted_size, limit_picture


def test_a_picture_within_the_limit_passes_unchanged():
    image = torch.rand(2, 1024, 1536, 3)
    out, note = limit_picture(image, 2.0)
    assert out is image and note is None


def test_a_picture_over_the_limit_is_refused_with_its_size_and_how_to_resize_it():
    image = torch.zeros(1, 4000, 6000, 3)
    with pytest.raises(PictureTooLarge) as info:
        limit_picture(image, 2.0, what="the source picture")
    message = str(info.value)
    assert message.startswith("the source picture is 6000 x 4000 pixels (24.0 megapixels), over the limit of 2")
    assert "at most 1728 x 1152" in message and "if_larger to 'resize'" in message and "raise max_megapixels" in message


@pytest.mark.parametrize("height, width, limit", [(4000, 6000, 2.0), (3001, 1999, 1.0), (9000, 90, 0.25)])
def test_resize_keeps_the_aspect_within_the_limit_on_multiples_of_eight(height, width, limit):
    fit_h, fit_w = fitted_size(height, width, limit)
    assert fit_h % 8 == 0 and fit_w % 8 == 0 and fit_h * fit_w <= limit * 1e6
    assert abs(fit_w / fit_h - width / height) / (width / height) < 0.1
    assert (fit_h + 8) * (fit_w + 8) > limit * 1e6 * 0.9  # not needlessly small


def test_resize_scales_the_picture_down_and_says_so():
    y = torch.linspace(0, 1, 2000)[:, None, None].expand(2000, 3000, 3)
    image = torch.stack([y, 1 - y])  # a batch of two vertical gradients
    out, note = limit_picture(image, 1.0, "resize", "the picture")
    assert out.shape == (2, 816, 1224, 3) and out.is_contiguous()
    assert note == ("the picture: resized from 3000 x 2000 (6.0 megapixels) to 1224 x 816 (1.00 megapixels), "
                    "the limit being 1")
    assert torch.allclose(out[0, :, 600, 0], torch.linspace(0, 1, 816), atol=0.01)  # the content, scaled
    assert torch.allclose(out[1], 1 - out[0], atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [({"if_larger": "crop"}, "if_larger must be one of refuse, resize"),
                                           ({"max_megapixels": 0}, "max_megapixels must be a positive number")])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        limit_picture(torch.zeros(1, 8, 8, 3), **kwargs)
