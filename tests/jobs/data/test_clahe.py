"""Image decoding: a file that is not an image is a one-line DatasetError naming it, whatever OpenCV does."""

import pytest

from jobs.data.clahe import decode_gray
from jobs.errors import DatasetError


def test_an_empty_file_is_named_not_an_opencv_assertion():
    # cv2.imdecode asserts (cv2.error: !buf.empty()) on 0 bytes rather than returning None.
    with pytest.raises(DatasetError) as caught:
        decode_gray(b"", "/data/nih/images/00000001_000.png")
    assert str(caught.value) == (
        "/data/nih/images/00000001_000.png: an empty file (0 bytes), not an image; re-extract it or delete it"
    )
