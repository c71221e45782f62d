"""The bundled sample's content, written by hand: which scikit-image photo becomes which image (crop,
size, mode, EXIF orientation), the pretrain captions and instructions, and the SFT conversations.
`stages.embedded.sample` builds the files from these tables; changing them means bumping its VERSION, and
changing a text the tiny LLM's too (`stages.embedded.llm` trains its tokenizer on them)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SampleImage", "Conversation", "PRETRAIN", "INSTRUCTIONS", "SHORT_ANSWER", "SFT_IMAGES", "SFT"]

FULL_FRAME = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class SampleImage:
    key: str  # path under image_root, exactly as written in the JSON; the suffix picks JPEG or PNG
    source: str  # scikit-image `data` function (or "motorcycle" for the left stereo frame)
    size: tuple[int, int]  # (w, h) written, after cropping `box`
    box: tuple[float, float, float, float] = FULL_FRAME  # fractional (left, top, right, bottom) crop
    mode: str = "RGB"  # "RGB", "L" or "RGBA"
    orientation: int = 1  # EXIF orientation tag; pixels are stored rotated to match
    clear_outside_circle: bool = False  # RGBA only: pixels outside the inscribed circle become (0, 0, 0, 0)


# (image, caption) in 558k style. Folder = first five digits of the nine-digit stem.
PRETRAIN: tuple[tuple[SampleImage, str], ...] = (
    (SampleImage("00000/000000012.jpg", "astronaut", (336, 336)),
     "a smiling astronaut in an orange spacesuit poses next to a model space shuttle and an american flag"),
    (SampleImage("00000/000000187.jpg", "astronaut", (200, 320), (0.0, 0.0, 0.62, 1.0)),
     "portrait of a woman astronaut in an orange flight suit with a mission patch, smiling at the camera"),
    (SampleImage("00001/000010044.jpg", "astronaut", (140, 282), (0.66, 0.0, 0.93, 0.55)),
     "a white model of the space shuttle with its brown fuel tank and two rocket boosters"),
    (SampleImage("00001/000010318.jpg", "astronaut", (320, 256), (0.5, 0.6, 1.0, 1.0)),
     "a shiny black space helmet with a white rim resting beside an orange suit sleeve"),
    (SampleImage("00002/000020077.jpg", "camera", (384, 384), mode="L"),
     "black and white photo of a man in a dark coat looking through a camera on a tripod in a grassy field"),
    (SampleImage("00002/000020731.jpg", "camera", (300, 233), (0.55, 0.1, 1.0, 0.45), mode="L"),
     "a black and white view of domed buildings and a tall tower on a city skyline"),
    (SampleImage("00003/000031150.jpg", "chelsea", (451, 300)),
     "close up of a tabby cat with green eyes and a pink nose looking at the camera"),
    (SampleImage("00003/000033302.jpg", "chelsea", (420, 144), (0.15, 0.1, 0.85, 0.5)),
     "the green eyes of a tabby cat seen up close"),
    (SampleImage("00004/000040009.jpg", "coffee", (480, 320)),
     "a cup of espresso on a red saucer with a spoon, on a wooden table"),
    (SampleImage("00004/000045120.jpg", "coffee", (360, 240), (0.1, 0.0, 0.7, 0.6), orientation=6),
     "close up of a white cup of coffee with golden crema on a red saucer"),
    (SampleImage("00005/000050466.jpg", "coins", (384, 303), mode="L"),
     "four rows of ancient silver coins laid out on a black background"),
    (SampleImage("00005/000052231.jpg", "coins", (512, 80), (0.0, 0.0, 1.0, 0.3), mode="L"),
     "a row of six old coins on a dark background"),
    (SampleImage("00006/000060801.jpg", "rocket", (512, 341)),
     "a rocket stands on the launch pad at dusk between four tall lightning towers"),
    (SampleImage("00006/000061937.jpg", "rocket", (96, 560), (0.42, 0.05, 0.58, 1.0)),
     "a tall white rocket on its launch pad against a deep blue evening sky"),
    (SampleImage("00007/000070042.jpg", "hubble_deep_field", (400, 349)),
     "a field of colourful distant galaxies scattered across the black of deep space"),
    (SampleImage("00007/000078115.jpg", "retina", (300, 300)),
     "a fundus photograph of a human retina with red blood vessels and a bright optic disc"),
    (SampleImage("00008/000080390.jpg", "moon", (320, 320), mode="L"),
     "the grey cratered surface of the moon"),
    (SampleImage("00008/000085512.jpg", "immunohistochemistry", (400, 400)),
     "microscope image of tissue with brown stained cells on a pale blue background"),
    (SampleImage("00009/000090276.jpg", "horse", (400, 328), mode="L"),
     "black silhouette of a horse standing on a white background"),
    (SampleImage("00009/000094403.jpg", "colorwheel", (371, 370)),
     "a circular colour wheel blending red, yellow, green, cyan, blue and magenta around a white centre"),
    (SampleImage("00010/000100155.jpg", "brick", (256, 256), mode="L"),
     "a grey brick wall of long narrow bricks laid in a staggered pattern"),
    (SampleImage("00010/000106628.jpg", "motorcycle", (480, 324)),
     "a red motorcycle parked in a workshop with shelves of boxes behind it"),
    (SampleImage("00011/000110073.jpg", "page", (384, 191), mode="L"),
     "a printed page of text with the heading region-based segmentation"),
    (SampleImage("00011/000117349.jpg", "gravel", (200, 200), mode="L"),
     "a close up of small grey gravel stones"),
)

INSTRUCTIONS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Write a terse but informative summary of the picture.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Render a clear and concise summary of the photo.",
)
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."

SFT_IMAGES = {
    "astronaut": SampleImage("coco/train2017/000000391895.jpg", "astronaut", (480, 480)),
    "coffee": SampleImage("coco/train2017/000000522418.jpg", "coffee", (600, 400)),
    "cat": SampleImage("coco/train2017/000000184613.jpg", "chelsea", (451, 300), orientation=8),
    "motorcycle": SampleImage("coco/train2017/000000318219.jpg", "motorcycle", (640, 432)),
    "camera": SampleImage("coco/train2017/000000554625.jpg", "camera", (512, 512), mode="L"),
    "rocket": SampleImage("gqa/images/2354786.jpg", "rocket", (640, 427)),
    "horse": SampleImage("gqa/images/2375429.jpg", "horse", (500, 410), mode="L"),
    "page": SampleImage("ocr_vqa/images/140031921X.jpg", "page", (420, 209), mode="L"),
    "text": SampleImage("textvqa/train_images/0a0bc91825468c45.jpg", "text", (448, 172), mode="L"),
    "heading": SampleImage("textvqa/train_images/0a3ff4bb1d1e2a5f.jpg", "page", (384, 42), (0.0, 0.0, 1.0, 0.22)),
    "coins": SampleImage("vg/VG_100K/2345678.jpg", "coins", (384, 303), mode="L"),
    "hubble": SampleImage("vg/VG_100K/2356012.jpg", "hubble_deep_field", (500, 436)),
    "logo": SampleImage("vg/VG_100K_2/2415037.png", "logo", (256, 256), mode="RGBA",
                   clear_outside_circle=True),
    "retina": SampleImage("vg/VG_100K_2/2401393.jpg", "retina", (400, 400)),
}

@dataclass(frozen=True)
class Conversation:
    """One SFT sample over `SFT_IMAGES[image]` (id = the image stem, as in mix665k), or text-only."""

    image: str | None
    rounds: tuple[tuple[str, str], ...]  # (human, gpt) pairs
    image_last: bool = False  # "question\n<image>" instead of "<image>\nquestion"
    text_id: str = ""


SFT: tuple[Conversation, ...] = (
    Conversation("astronaut", (
        ("What is the person in the image wearing?",
         "She is wearing an orange spacesuit with a mission patch on the chest; the metal neck ring of the "
         "suit is visible around her collar."),
        ("What objects are next to her?",
         "A white model of the space shuttle stands behind her on the right, a black helmet rests in front "
         "of her, and an American flag hangs on the left."),
        ("What might her job be?",
         "Given the spacesuit, the helmet and the shuttle model, she is most likely an astronaut posing for "
         "an official portrait."))),
    Conversation("astronaut", (
        ("What color is the spacesuit?" + SHORT_ANSWER, "Orange"),
        ("Is there a flag in the picture?", "Yes")), image_last=True),
    Conversation("coffee", (
        ("What drink is shown in the picture?",
         "A cup of espresso with a layer of light brown crema, served in a white cup on a red saucer."),
        ("Is there anything else on the saucer?", "Yes, a metal spoon rests on the saucer beside the cup."),
        ("What is the table made of?", "The table is made of wood; its grain is clearly visible."))),
    Conversation(None, (
        ("What is the difference between a latent and a pixel in image generation?",
         "A pixel is one colour value of the final image. A latent is a point in a smaller learned space; a "
         "latent diffusion model denoises latents and a decoder turns them into pixels."),
        ("Why use latents at all?",
         "They are much smaller than the image, so every denoising step costs far less compute.")),
        text_id="i6IyJda_0"),
    Conversation("coffee", (
        ("What color is the saucer?" + SHORT_ANSWER, "Red"),
        ("How many cups are there?", "1"))),
    Conversation("cat", (
        ("Describe the animal in the image.",
         "It is a tabby cat photographed very close up, with striped brown and grey fur, large green eyes "
         "and a pink nose."),
        ("Where is the cat looking?", "The cat is looking straight at the camera.")), image_last=True),
    Conversation("cat", (
        ("What animal is this?" + SHORT_ANSWER, "Cat"),
        ("What color are its eyes?", "Green"))),
    Conversation("motorcycle", (
        ("What vehicle is in the picture?", "A red motorcycle with a black seat and chrome exhaust pipes."),
        ("Where is it parked?",
         "Indoors, in what looks like a garage or workshop with metal shelves full of cardboard boxes."),
        ("Is anyone riding it?", "No, the motorcycle stands on its own with nobody on it."))),
    Conversation("motorcycle", (
        ("Is the motorcycle red?" + SHORT_ANSWER, "Yes"),
        ("Is it outdoors?", "No")), image_last=True),
    Conversation("camera", (
        ("What is the man doing?",
         "He is looking through a camera mounted on a tripod, as if filming or photographing something in "
         "the distance."),
        ("Is this a color photo?", "No, it is a black and white photograph."))),
    Conversation("camera", (
        ("What is on the tripod?" + SHORT_ANSWER, "Camera"),
        ("What covers the ground?", "Grass"))),
    Conversation(None, (
        ("Write a haiku about autumn.",
         "Red leaves drift and fall\nthe cold river carries them\npast the sleeping stones"),),
        text_id="wfXKqdM_12"),
    Conversation("rocket", (
        ("What is standing on the launch pad?" + SHORT_ANSWER, "Rocket"),
        ("Is the sky dark?", "Yes"),
        ("How many towers are there?", "4"))),
    Conversation("rocket", (
        ("Describe this scene.",
         "A white rocket stands upright on a launch pad in the evening. Four tall metal lightning towers "
         "surround it, and bright lights glow along the base of the pad under a dark blue sky."),
        ("What time of day is it?", "It is dusk: the sky is deep blue and the pad lights are already on.")),
        image_last=True),
    Conversation("horse", (
        ("What animal is shown?" + SHORT_ANSWER, "Horse"),
        ("What color is the horse?", "Black"))),
    Conversation("horse", (
        ("Is the horse standing or lying down?" + SHORT_ANSWER, "Standing"),
        ("Which way is the horse facing?", "Right"))),
    Conversation("page", (
        ("What is the title of this section?", "Region-based segmentation"),
        ("Is this a programming document?", "Yes"))),
    Conversation("page", (
        ("What does this page explain?",
         "It is a page from a tutorial on region-based segmentation. It says that markers for the coins and "
         "the background are taken from the two extreme parts of the histogram of grey values, and it ends "
         "with a line of Python code."),
        ("Which function is called in the code?", "np.zeros_like, applied to the coins image.")),
        image_last=True),
    Conversation("text", (
        ("What is written on the paper?" + SHORT_ANSWER, "Math formulas"),
        ("Is the writing printed or handwritten?", "Handwritten"))),
    Conversation(None, (
        ("Give me three tips for learning to cook.",
         "Start with simple recipes you enjoy, taste as you go, and keep your knives sharp."),
        ("Which one matters most?",
         "Tasting as you go: it teaches you how seasoning and heat change a dish."),
        ("Thanks!", "You're welcome. Enjoy your cooking!")),
        text_id="hv9Tz4Q_0"),
    Conversation("text", (
        ("What is this?",
         "A close-up of a sheet of paper covered in handwritten mathematical equations, photographed at an "
         "angle in black and white."),
        ("Can you read any symbols?",
         "Yes, there are equals signs, parentheses, fractions and the letters s and t.")), image_last=True),
    Conversation("heading", (
        ("What does the heading say?", "Region-based segmentation"),
        ("Is the text printed or handwritten?", "Printed"))),
    Conversation("heading", (
        ("What word comes before segmentation?" + SHORT_ANSWER, "Region-based"),
        ("What color is the text?", "Black")), image_last=True),
    Conversation("coins", (
        ("What objects are shown?", "Old silver coins, arranged in rows on a black background."),
        ("How many rows of coins are there?", "There are four rows, each with six coins."))),
    Conversation("coins", (
        ("What are the coins lying on?" + SHORT_ANSWER, "Black cloth"),
        ("How many coins are there?", "24")), image_last=True),
    Conversation("hubble", (
        ("What does this image show?",
         "A deep view of space filled with hundreds of small galaxies of different colors and shapes on a "
         "black background."),
        ("Was it taken with a telescope?", "Yes, it is a deep-field image from a space telescope."))),
    Conversation("hubble", (
        ("What color is the background?" + SHORT_ANSWER, "Black"),
        ("Is it daytime?", "No")), image_last=True),
    Conversation(None, (
        ("Convert 5 kilometres to miles.", "5 kilometres is about 3.11 miles."),
        ("And 10 miles to kilometres?", "10 miles is about 16.09 kilometres.")),
        text_id="Q8mNk3r_4"),
    Conversation("logo", (
        ("What is drawn in the logo?",
         "A circle split by a white S-shaped line into a green half and an orange half, with a drawing of "
         "a snake's scaly head over it."),
        ("What is outside the circle?", "Nothing: the background around the circle is transparent."))),
    Conversation("logo", (
        ("What colors fill the circle?" + SHORT_ANSWER, "Green and orange"),
        ("What animal is drawn?", "Snake")), image_last=True),
    Conversation("retina", (
        ("What kind of image is this?",
         "A fundus photograph of the back of a human eye, showing the orange retina, the branching red "
         "blood vessels and the bright optic disc on the left."),
        ("Where do the blood vessels start?", "They spread out from the bright optic disc."))),
    Conversation("retina", (
        ("What body part is shown?" + SHORT_ANSWER, "Eye"),
        ("What color is the retina?", "Orange")), image_last=True),
)
