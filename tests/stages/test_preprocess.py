import numpy as np
import pytest
import torch
from PIL import Image

from stages.image_files import ImageError, UnsafeKey, find_files, safe_image_path
from stages.preprocess import ImageSpec, load_image, preprocess, to_tensor


def solid(width, height, colour=(200, 10, 30)):
    return Image.new("RGB", (width, height), colour)


def test_pad_centres_the_image_on_the_clip_mean_square():
    out = preprocess(solid(40, 20), ImageSpec(resolution=40, resize_mode="pad"))
    pixels = np.asarray(out)
    assert out.size == (40, 40)
    assert tuple(pixels[0, 0]) == (122, 116, 104)  # padding above: rows 0..9
    assert tuple(pixels[20, 20]) == (200, 10, 30)  # the image sits at rows 10..29
    assert tuple(pixels[35, 20]) == (122, 116, 104)


def test_crop_and_stretch_use_the_whole_square():
    image = Image.new("RGB", (60, 20), (0, 0, 0))
    image.paste(solid(20, 20), (20, 0))  # centre third is red
    cropped = np.asarray(preprocess(image, ImageSpec(resolution=20, resize_mode="crop")))
    assert (cropped == (200, 10, 30)).all()
    stretched = np.asarray(preprocess(image, ImageSpec(resolution=30, resize_mode="stretch")))
    assert tuple(stretched[15, 2]) == (0, 0, 0) and tuple(stretched[15, 15]) == (200, 10, 30)


def test_to_tensor_maps_0_255_to_minus1_1_chw():
    tensor = to_tensor(Image.fromarray(np.array([[[0, 255, 51]]], dtype=np.uint8)))
    assert tensor.shape == (3, 1, 1) and tensor.dtype == torch.float32
    assert tensor.flatten().tolist() == pytest.approx([-1.0, 1.0, 51 / 255 * 2 - 1])


def test_exif_orientation_is_applied_and_modes_become_rgb(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display: a 30x10 file shows as 10x30
    solid(30, 10).save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path, "rot.jpg").size == (10, 30)
    Image.new("RGBA", (5, 5), (1, 2, 3, 0)).save(tmp_path / "a.png")
    Image.new("L", (5, 5), 9).save(tmp_path / "g.png")
    Image.new("CMYK", (5, 5), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert {load_image(tmp_path, n).mode for n in ("a.png", "g.png", "c.jpg")} == {"RGB"}


@pytest.mark.parametrize("key, cause", [
    ("/etc/passwd", "absolute path"), ("../secret.jpg", "'..' in the path"), ("a/../../secret.jpg", "'..' in the path"),
    ("a/./../b.jpg", "'..' in the path"), ("~/x.jpg", "starts with '~'"), ("", "empty path"),
])
def test_keys_that_could_leave_the_root_as_written_are_refused_with_their_cause(tmp_path, key, cause):
    (tmp_path / "root" / "a").mkdir(parents=True)
    with pytest.raises(UnsafeKey) as info:
        safe_image_path(tmp_path / "root", key)
    assert info.value.cause == cause and (not key or "escapes the image root" in str(info.value))


def test_symlinks_the_image_root_holds_are_followed_wherever_they_lead(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere" / "coco"
    root.mkdir()
    elsewhere.mkdir(parents=True)
    solid(4, 4).save(elsewhere / "1.jpg")
    solid(6, 6).save(tmp_path / "outside.jpg")
    (root / "coco").symlink_to(elsewhere)  # a linked folder (LLaVA set-ups: coco -> /data/coco)
    (root / "link.jpg").symlink_to(tmp_path / "outside.jpg")  # a linked file
    assert load_image(root, "coco/1.jpg").size == (4, 4) and load_image(root, "link.jpg").size == (6, 6)


def test_find_files_follows_symlinked_folders_once_and_ends_a_link_cycle(tmp_path):
    root, kept = tmp_path / "root", tmp_path / "kept"
    (kept / "sub").mkdir(parents=True)
    (root / "own").mkdir(parents=True)
    for path in (kept / "a.parquet", kept / "sub" / "b.parquet", root / "own" / "c.parquet", kept / "x.txt"):
        path.write_bytes(b"")
    (root / "data").symlink_to(kept)  # pathlib's rglob does not enter it (Python < 3.13)
    (root / "data2").symlink_to(kept)  # the same folder again: listed once, under its first name
    (kept / "loop").symlink_to(root)  # a cycle back to the root
    found = [p.relative_to(root).as_posix() for p in find_files(root, "*.parquet")]
    assert found == ["data/a.parquet", "data/sub/b.parquet", "own/c.parquet"]


def test_unusable_files_raise_image_error_with_a_reason(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    solid(64, 64).save(tmp_path / "full.jpg")
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    solid(100, 100).save(tmp_path / "big.png")
    reasons = {}
    for name in ("zero.jpg", "junk.jpg", "trunc.jpg", "missing.jpg"):
        with pytest.raises(ImageError) as info:
            load_image(tmp_path, name)
        reasons[name] = str(info.value)
    with pytest.raises(ImageError, match="max_pixels"):
        load_image(tmp_path, "big.png", max_pixels=50 * 50)
    assert "zero-byte" in reasons["zero.jpg"] and "missing" in reasons["missing.jpg"]
    assert "cannot decode" in reasons["junk.jpg"] and "cannot decode" in reasons["trunc.jpg"]
