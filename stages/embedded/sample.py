"""Bundled sample data in LLaVA format, written from the photos that ship inside scikit-image.

`ensure_sample(root)` writes (once; idempotent, atomic like every embedded artefact) an image folder and
two JSON files shaped like the real ones:

- `pretrain.json`, 558k style: 24 samples, keys like `00453/004539375.jpg`, one human/gpt turn
  (`"<image>\\n<instruction>"` -> caption), id = the file stem;
- `sft.json`, mix665k style: 32 samples: 28 over 14 images under `coco/train2017/`, `gqa/images/`,
  `ocr_vqa/images/`, `textvqa/train_images/`, `vg/VG_100K/`, `vg/VG_100K_2/` (each image used by two
  samples, and their ids repeat, as in mix665k), multi-turn, `<image>` at the start or at the end of the
  first human turn; plus 4 text-only samples with no `image` key.

Images are crops and resizes in varied sizes and aspect ratios (one 6.4:1 wide, one 1:5.8 tall, one 9:1
strip), colour and greyscale JPEGs, one RGBA PNG, and two JPEGs whose EXIF orientation (6 and 8) must be
applied to see them upright; captions and answers describe the upright view and were written by hand.

Default location: `bundled_sample_dir()` materialises it as `embedded:sample` under the embedded home
(`$DFC_EMBEDDED_HOME`, see `stages.embedded`), never relative to the working directory; callers that
want it elsewhere pass their own root to `ensure_sample`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stages.embedded import materialize, register_embedded, resolve_model

__all__ = ["VERSION", "SamplePaths", "ensure_sample", "bundled_sample_dir", "sample_paths"]

VERSION = 2
_FULL = (0.0, 0.0, 1.0, 1.0)
# EXIF orientation -> the transpose that stores an upright image so that `ImageOps.exif_transpose` undoes it.
_STORE_TRANSPOSE = {6: "ROTATE_90", 8: "ROTATE_270"}


@dataclass(frozen=True)
class SamplePaths:
    """Where the sample lives: image keys in both JSON files are relative to `image_root`."""

    image_root: Path
    pretrain_json: Path
    sft_json: Path


@dataclass(frozen=True)
class _Image:
    key: str  # path under image_root, exactly as written in the JSON; the suffix picks JPEG or PNG
    source: str  # scikit-image `data` function (or "motorcycle" for the left stereo frame)
    size: tuple[int, int]  # (w, h) written, after cropping `box`
    box: tuple[float, float, float, float] = _FULL  # fractional (left, top, right, bottom) crop
    mode: str = "RGB"  # "RGB", "L" or "RGBA"
    orientation: int = 1  # EXIF orientation tag; pixels are stored rotated to match
    clear_outside_circle: bool = False  # RGBA only: pixels outside the inscribed circle become (0, 0, 0, 0)


# (image, caption) in 558k style. Folder = first five digits of the nine-digit stem.
_PRETRAIN: tuple[tuple[_Image, str], ...] = (
    (_Image("00000/000000012.jpg", "astronaut", (336, 336)),
     "a smiling astronaut in an orange spacesuit poses next to a model space shuttle and an american flag"),
    (_Image("00000/000000187.jpg", "astronaut", (200, 320), (0.0, 0.0, 0.62, 1.0)),
     "portrait of a woman astronaut in an orange flight suit with a mission patch, smiling at the camera"),
    (_Image("00001/000010044.jpg", "astronaut", (140, 282), (0.66, 0.0, 0.93, 0.55)),
     "a white model of the space shuttle with its brown fuel tank and two rocket boosters"),
    (_Image("00001/000010318.jpg", "astronaut", (320, 256), (0.5, 0.6, 1.0, 1.0)),
     "a shiny black space helmet with a white rim resting beside an orange suit sleeve"),
    (_Image("00002/000020077.jpg", "camera", (384, 384), mode="L"),
     "black and white photo of a man in a dark coat looking through a camera on a tripod in a grassy field"),
    (_Image("00002/000020731.jpg", "camera", (300, 233), (0.55, 0.1, 1.0, 0.45), mode="L"),
     "a black and white view of domed buildings and a tall tower on a city skyline"),
    (_Image("00003/000031150.jpg", "chelsea", (451, 300)),
     "close up of a tabby cat with green eyes and a pink nose looking at the camera"),
    (_Image("00003/000033302.jpg", "chelsea", (420, 144), (0.15, 0.1, 0.85, 0.5)),
     "the green eyes of a tabby cat seen up close"),
    (_Image("00004/000040009.jpg", "coffee", (480, 320)),
     "a cup of espresso on a red saucer with a spoon, on a wooden table"),
    (_Image("00004/000045120.jpg", "coffee", (360, 240), (0.1, 0.0, 0.7, 0.6), orientation=6),
     "close up of a white cup of coffee with golden crema on a red saucer"),
    (_Image("00005/000050466.jpg", "coins", (384, 303), mode="L"),
     "four rows of ancient silver coins laid out on a black background"),
    (_Image("00005/000052231.jpg", "coins", (512, 80), (0.0, 0.0, 1.0, 0.3), mode="L"),
     "a row of six old coins on a dark background"),
    (_Image("00006/000060801.jpg", "rocket", (512, 341)),
     "a rocket stands on the launch pad at dusk between four tall lightning towers"),
    (_Image("00006/000061937.jpg", "rocket", (96, 560), (0.42, 0.05, 0.58, 1.0)),
     "a tall white rocket on its launch pad against a deep blue evening sky"),
    (_Image("00007/000070042.jpg", "hubble_deep_field", (400, 349)),
     "a field of colourful distant galaxies scattered across the black of deep space"),
    (_Image("00007/000078115.jpg", "retina", (300, 300)),
     "a fundus photograph of a human retina with red blood vessels and a bright optic disc"),
    (_Image("00008/000080390.jpg", "moon", (320, 320), mode="L"),
     "the grey cratered surface of the moon"),
    (_Image("00008/000085512.jpg", "immunohistochemistry", (400, 400)),
     "microscope image of tissue with brown stained cells on a pale blue background"),
    (_Image("00009/000090276.jpg", "horse", (400, 328), mode="L"),
     "black silhouette of a horse standing on a white background"),
    (_Image("00009/000094403.jpg", "colorwheel", (371, 370)),
     "a circular colour wheel blending red, yellow, green, cyan, blue and magenta around a white centre"),
    (_Image("00010/000100155.jpg", "brick", (256, 256), mode="L"),
     "a grey brick wall of long narrow bricks laid in a staggered pattern"),
    (_Image("00010/000106628.jpg", "motorcycle", (480, 324)),
     "a red motorcycle parked in a workshop with shelves of boxes behind it"),
    (_Image("00011/000110073.jpg", "page", (384, 191), mode="L"),
     "a printed page of text with the heading region-based segmentation"),
    (_Image("00011/000117349.jpg", "gravel", (200, 200), mode="L"),
     "a close up of small grey gravel stones"),
)

_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Write a terse but informative summary of the picture.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Render a clear and concise summary of the photo.",
)
_SHORT = "\nAnswer the question using a single word or phrase."

_SFT_IMAGES = {
    "astronaut": _Image("coco/train2017/000000391895.jpg", "astronaut", (480, 480)),
    "coffee": _Image("coco/train2017/000000522418.jpg", "coffee", (600, 400)),
    "cat": _Image("coco/train2017/000000184613.jpg", "chelsea", (451, 300), orientation=8),
    "motorcycle": _Image("coco/train2017/000000318219.jpg", "motorcycle", (640, 432)),
    "camera": _Image("coco/train2017/000000554625.jpg", "camera", (512, 512), mode="L"),
    "rocket": _Image("gqa/images/2354786.jpg", "rocket", (640, 427)),
    "horse": _Image("gqa/images/2375429.jpg", "horse", (500, 410), mode="L"),
    "page": _Image("ocr_vqa/images/140031921X.jpg", "page", (420, 209), mode="L"),
    "text": _Image("textvqa/train_images/0a0bc91825468c45.jpg", "text", (448, 172), mode="L"),
    "heading": _Image("textvqa/train_images/0a3ff4bb1d1e2a5f.jpg", "page", (384, 42), (0.0, 0.0, 1.0, 0.22)),
    "coins": _Image("vg/VG_100K/2345678.jpg", "coins", (384, 303), mode="L"),
    "hubble": _Image("vg/VG_100K/2356012.jpg", "hubble_deep_field", (500, 436)),
    "logo": _Image("vg/VG_100K_2/2415037.png", "logo", (256, 256), mode="RGBA",
                   clear_outside_circle=True),
    "retina": _Image("vg/VG_100K_2/2401393.jpg", "retina", (400, 400)),
}

@dataclass(frozen=True)
class _Conv:
    """One SFT sample over `_SFT_IMAGES[image]` (id = the image stem, as in mix665k), or text-only."""

    image: str | None
    rounds: tuple[tuple[str, str], ...]  # (human, gpt) pairs
    image_last: bool = False  # "question\n<image>" instead of "<image>\nquestion"
    text_id: str = ""


_SFT: tuple[_Conv, ...] = (
    _Conv("astronaut", (
        ("What is the person in the image wearing?",
         "She is wearing an orange spacesuit with a mission patch on the chest; the metal neck ring of the "
         "suit is visible around her collar."),
        ("What objects are next to her?",
         "A white model of the space shuttle stands behind her on the right, a black helmet rests in front "
         "of her, and an American flag hangs on the left."),
        ("What might her job be?",
         "Given the spacesuit, the helmet and the shuttle model, she is most likely an astronaut posing for "
         "an official portrait."))),
    _Conv("astronaut", (
        ("What color is the spacesuit?" + _SHORT, "Orange"),
        ("Is there a flag in the picture?", "Yes")), image_last=True),
    _Conv("coffee", (
        ("What drink is shown in the picture?",
         "A cup of espresso with a layer of light brown crema, served in a white cup on a red saucer."),
        ("Is there anything else on the saucer?", "Yes, a metal spoon rests on the saucer beside the cup."),
        ("What is the table made of?", "The table is made of wood; its grain is clearly visible."))),
    _Conv(None, (
        ("What is the difference between a latent and a pixel in image generation?",
         "A pixel is one colour value of the final image. A latent is a point in a smaller learned space; a "
         "latent diffusion model denoises latents and a decoder turns them into pixels."),
        ("Why use latents at all?",
         "They are much smaller than the image, so every denoising step costs far less compute.")),
        text_id="i6IyJda_0"),
    _Conv("coffee", (
        ("What color is the saucer?" + _SHORT, "Red"),
        ("How many cups are there?", "1"))),
    _Conv("cat", (
        ("Describe the animal in the image.",
         "It is a tabby cat photographed very close up, with striped brown and grey fur, large green eyes "
         "and a pink nose."),
        ("Where is the cat looking?", "The cat is looking straight at the camera.")), image_last=True),
    _Conv("cat", (
        ("What animal is this?" + _SHORT, "Cat"),
        ("What color are its eyes?", "Green"))),
    _Conv("motorcycle", (
        ("What vehicle is in the picture?", "A red motorcycle with a black seat and chrome exhaust pipes."),
        ("Where is it parked?",
         "Indoors, in what looks like a garage or workshop with metal shelves full of cardboard boxes."),
        ("Is anyone riding it?", "No, the motorcycle stands on its own with nobody on it."))),
    _Conv("motorcycle", (
        ("Is the motorcycle red?" + _SHORT, "Yes"),
        ("Is it outdoors?", "No")), image_last=True),
    _Conv("camera", (
        ("What is the man doing?",
         "He is looking through a camera mounted on a tripod, as if filming or photographing something in "
         "the distance."),
        ("Is this a color photo?", "No, it is a black and white photograph."))),
    _Conv("camera", (
        ("What is on the tripod?" + _SHORT, "Camera"),
        ("What covers the ground?", "Grass"))),
    _Conv(None, (
        ("Write a haiku about autumn.",
         "Red leaves drift and fall\nthe cold river carries them\npast the sleeping stones"),),
        text_id="wfXKqdM_12"),
    _Conv("rocket", (
        ("What is standing on the launch pad?" + _SHORT, "Rocket"),
        ("Is the sky dark?", "Yes"),
        ("How many towers are there?", "4"))),
    _Conv("rocket", (
        ("Describe this scene.",
         "A white rocket stands upright on a launch pad in the evening. Four tall metal lightning towers "
         "surround it, and bright lights glow along the base of the pad under a dark blue sky."),
        ("What time of day is it?", "It is dusk: the sky is deep blue and the pad lights are already on.")),
        image_last=True),
    _Conv("horse", (
        ("What animal is shown?" + _SHORT, "Horse"),
        ("What color is the horse?", "Black"))),
    _Conv("horse", (
        ("Is the horse standing or lying down?" + _SHORT, "Standing"),
        ("Which way is the horse facing?", "Right"))),
    _Conv("page", (
        ("What is the title of this section?", "Region-based segmentation"),
        ("Is this a programming document?", "Yes"))),
    _Conv("page", (
        ("What does this page explain?",
         "It is a page from a tutorial on region-based segmentation. It says that markers for the coins and "
         "the background are taken from the two extreme parts of the histogram of grey values, and it ends "
         "with a line of Python code."),
        ("Which function is called in the code?", "np.zeros_like, applied to the coins image.")),
        image_last=True),
    _Conv("text", (
        ("What is written on the paper?" + _SHORT, "Math formulas"),
        ("Is the writing printed or handwritten?", "Handwritten"))),
    _Conv(None, (
        ("Give me three tips for learning to cook.",
         "Start with simple recipes you enjoy, taste as you go, and keep your knives sharp."),
        ("Which one matters most?",
         "Tasting as you go: it teaches you how seasoning and heat change a dish."),
        ("Thanks!", "You're welcome. Enjoy your cooking!")),
        text_id="hv9Tz4Q_0"),
    _Conv("text", (
        ("What is this?",
         "A close-up of a sheet of paper covered in handwritten mathematical equations, photographed at an "
         "angle in black and white."),
        ("Can you read any symbols?",
         "Yes, there are equals signs, parentheses, fractions and the letters s and t.")), image_last=True),
    _Conv("heading", (
        ("What does the heading say?", "Region-based segmentation"),
        ("Is the text printed or handwritten?", "Printed"))),
    _Conv("heading", (
        ("What word comes before segmentation?" + _SHORT, "Region-based"),
        ("What color is the text?", "Black")), image_last=True),
    _Conv("coins", (
        ("What objects are shown?", "Old silver coins, arranged in rows on a black background."),
        ("How many rows of coins are there?", "There are four rows, each with six coins."))),
    _Conv("coins", (
        ("What are the coins lying on?" + _SHORT, "Black cloth"),
        ("How many coins are there?", "24")), image_last=True),
    _Conv("hubble", (
        ("What does this image show?",
         "A deep view of space filled with hundreds of small galaxies of different colors and shapes on a "
         "black background."),
        ("Was it taken with a telescope?", "Yes, it is a deep-field image from a space telescope."))),
    _Conv("hubble", (
        ("What color is the background?" + _SHORT, "Black"),
        ("Is it daytime?", "No")), image_last=True),
    _Conv(None, (
        ("Convert 5 kilometres to miles.", "5 kilometres is about 3.11 miles."),
        ("And 10 miles to kilometres?", "10 miles is about 16.09 kilometres.")),
        text_id="Q8mNk3r_4"),
    _Conv("logo", (
        ("What is drawn in the logo?",
         "A circle split by a white S-shaped line into a green half and an orange half, with a drawing of "
         "a snake's scaly head over it."),
        ("What is outside the circle?", "Nothing: the background around the circle is transparent."))),
    _Conv("logo", (
        ("What colors fill the circle?" + _SHORT, "Green and orange"),
        ("What animal is drawn?", "Snake")), image_last=True),
    _Conv("retina", (
        ("What kind of image is this?",
         "A fundus photograph of the back of a human eye, showing the orange retina, the branching red "
         "blood vessels and the bright optic disc on the left."),
        ("Where do the blood vessels start?", "They spread out from the bright optic disc."))),
    _Conv("retina", (
        ("What body part is shown?" + _SHORT, "Eye"),
        ("What color is the retina?", "Orange")), image_last=True),
)


def sample_paths(root: Path) -> SamplePaths:
    """The file layout under a sample root (does not create anything)."""
    root = Path(root)
    return SamplePaths(image_root=root / "images", pretrain_json=root / "pretrain.json",
                       sft_json=root / "sft.json")


def _photo(source: str):
    """A scikit-image sample photo as a PIL image (only files shipped in the wheel; no pooch download)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    if source == "motorcycle":
        return Image.fromarray(skimage.data.stereo_motorcycle()[0])
    pixels = getattr(skimage.data, source)()
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    return Image.fromarray(pixels)


def _clear_outside_circle(im):
    """Transparent black outside the inscribed circle: the usual RGBA edge case (alpha 0, colour 0)."""
    import numpy as np
    from PIL import Image

    pixels = np.array(im)  # (H, W, 4)
    h, w = pixels.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    outside = (xx + 0.5 - w / 2) ** 2 + (yy + 0.5 - h / 2) ** 2 > (0.48 * min(w, h)) ** 2
    pixels[outside] = 0
    return Image.fromarray(pixels, mode="RGBA")


def _write_image(spec: _Image, image_root: Path) -> None:
    from PIL import Image

    im = _photo(spec.source)
    w, h = im.size
    left, top, right, bottom = spec.box
    im = im.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))
    im = im.convert(spec.mode).resize(spec.size, Image.Resampling.BICUBIC)
    if spec.clear_outside_circle:
        im = _clear_outside_circle(im)
    path = image_root / spec.key
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        im.save(path, format="PNG")
        return
    exif = Image.Exif()
    if spec.orientation != 1:
        im = im.transpose(getattr(Image.Transpose, _STORE_TRANSPOSE[spec.orientation]))
        exif[0x0112] = spec.orientation  # Orientation
    im.save(path, format="JPEG", quality=90, exif=exif.tobytes())


def _turns(rounds: tuple[tuple[str, str], ...], *, image: bool, image_last: bool) -> list[dict[str, str]]:
    turns = []
    for i, (human, gpt) in enumerate(rounds):
        if i == 0 and image:
            human = f"{human}\n<image>" if image_last else f"<image>\n{human}"
        turns += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return turns


def _records() -> tuple[list[dict], list[dict]]:
    pretrain = [
        {"id": Path(spec.key).stem, "image": spec.key,
         "conversations": _turns(((_INSTRUCTIONS[i % len(_INSTRUCTIONS)], caption),), image=True,
                                 image_last=False)}
        for i, (spec, caption) in enumerate(_PRETRAIN)
    ]
    sft = []
    for conv in _SFT:
        if conv.image is None:
            record: dict = {"id": conv.text_id}
        else:
            key = _SFT_IMAGES[conv.image].key
            record = {"id": Path(key).stem, "image": key}
        has_image = conv.image is not None
        record["conversations"] = _turns(conv.rounds, image=has_image, image_last=conv.image_last)
        sft.append(record)
    return pretrain, sft


def _build(root: Path) -> None:
    paths = sample_paths(root)
    for spec in [spec for spec, _ in _PRETRAIN] + list(_SFT_IMAGES.values()):
        _write_image(spec, paths.image_root)
    pretrain, sft = _records()
    for path, records in ((paths.pretrain_json, pretrain), (paths.sft_json, sft)):
        path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def ensure_sample(root: Path) -> SamplePaths:
    """Write the sample under `root` unless a complete copy is there; return its paths.

    `root` may be missing or an empty directory; a non-empty directory without the completion
    manifest is refused (see `stages.embedded.materialize`).
    """
    materialize(Path(root), _build)
    return sample_paths(root)


def bundled_sample_dir() -> Path:
    """Root of the default sample, materialised once as `embedded:sample` under the embedded home.

    `ensure_sample(bundled_sample_dir())` gives its paths; nothing is written relative to the CWD.
    """
    return Path(resolve_model("embedded:sample"))


register_embedded("sample", version=VERSION, build_fn=_build)
