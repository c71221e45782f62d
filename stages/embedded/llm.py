"""The embedded default language model: a tiny Llama-architecture causal LM with an offline tokenizer.

Nothing is downloaded. The tokenizer is a byte-level BPE trained with `tokenizers` on the fixed corpus
below (English with the words LLaVA prompts use) and the bundled sample's captions and conversations,
written as the `v1` template renders them (`USER: … ASSISTANT: …`, each answer after a space), so that
the words the sample trains the model to say are whole tokens (` Yes`, ` Red`, ` The`) as in a real LLM's
vocabulary: a tiny model trained briefly on the sample then answers in words, where spelling them letter
by letter from a bare ` ` token left its greedy answers blank. It is wrapped as a `PreTrainedTokenizerFast` that behaves
like Vicuna's: `<unk>` = 0, `<s>` = 1 (bos, prepended to every encoded text), `</s>` = 2 (eos), and
pad = `<unk>` as in Vicuna/LLaVA (no extra token, so the vocabulary is exactly what BPE learned; the
collate derives the attention mask from lengths, never from the pad id). Byte-level BPE encodes any
text without `<unk>`. The weights come from `stages.embedded.weights`. `build_tiny_llm(out_dir)` writes one
directory (model + tokenizer) loadable with `AutoModelForCausalLM` / `AutoTokenizer`; two builds are
byte-identical. Registered as `embedded:tiny-llm` (`resolve_model` returns the built directory).
Changing the corpus, the sample's texts or the sizes changes the model: bump `TINY_LLM_VERSION`.
"""
from __future__ import annotations

from pathlib import Path

from stages.embedded import register_embedded
from stages.embedded.weights import save_model, seeded_model

__all__ = ["TINY_LLM", "TINY_LLM_VERSION", "build_tiny_tokenizer", "build_tiny_llm"]

TINY_LLM = "tiny-llm"
TINY_LLM_VERSION = 3  # 2: weights from stages.embedded.weights, configs without version stamps; 3: sample texts
# in the tokenizer's corpus
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in Llama
_BPE_VOCAB_SIZE = 1024  # ids in all: BPE merges pairs seen at least twice until it has them

_CORPUS = """\
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, \
detailed, and polite answers to the user's questions.
USER: What is in the image? ASSISTANT: The image shows a cat sitting on a red sofa next to a window.
USER: What color is the bus? ASSISTANT: The bus is yellow with a blue stripe along its side.
USER: How many people are in the picture? ASSISTANT: There are three people standing near the table.
USER: What is the man holding? ASSISTANT: The man is holding an umbrella in his left hand.
USER: Where is the dog? ASSISTANT: The dog is lying on the grass under a large tree.
USER: Is it raining? ASSISTANT: No, the sky is clear and the street is dry.
USER: What time of day is it? ASSISTANT: It appears to be late afternoon, with long shadows on the ground.
USER: What is written on the sign? ASSISTANT: The sign says "Stop" in white letters on a red background.
USER: Who wrote this book? ASSISTANT: The book was written by an author whose name appears on the cover.
USER: What is the title of this book? ASSISTANT: The title of the book is printed in large letters.
USER: What type of food is on the plate? ASSISTANT: The plate holds a sandwich, some fries and a salad.
USER: Can you describe the scene in detail? ASSISTANT: A busy city street with cars, bicycles and \
pedestrians. Tall buildings line both sides, and a traffic light is green at the corner.
USER: Why might the woman be smiling? ASSISTANT: She may be happy because she is meeting a friend.
Answer the question using a single word or phrase.
Answer with the option's letter from the given choices directly.
Describe the image concisely.
Provide a brief description of the given image.
Offer a succinct explanation of the picture presented.
Summarize the visual content of the image.
Give a short and clear explanation of the subsequent image.
Share a concise interpretation of the image provided.
Present a compact description of the photo's key features.
Relay a brief, clear account of the picture shown.
Render a clear and concise summary of the photo.
Write a terse but informative summary of the picture.
Create a compact narrative representing the image presented.
What is the color of the car? Red. What is the animal? A horse. How many? Two. Is there a person? Yes.
a black and white photo of a train at a station
a plate of food with broccoli, rice and chicken
two dogs playing with a ball in a park
a woman riding a bicycle down a city street
a kitchen with a stove, a sink and wooden cabinets
a group of people flying kites on a beach
a bowl of fruit on a table near a window
a man in a suit talking on a phone
a small boat on a lake with mountains in the background
a giraffe standing next to a tall tree at the zoo
a bathroom with a white toilet and a blue shower curtain
a pizza with cheese and tomatoes on a wooden board
a child holding a teddy bear in a bedroom
an airplane flying over a field of green grass
a living room with a couch, a lamp and a television
a stop sign at the corner of an empty road
a clock tower in the middle of a town square
a laptop computer on a desk next to a cup of coffee
the cat is sleeping on the bed and the dog is on the floor
The quick brown fox jumps over the lazy dog. The five boxing wizards jump quickly.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 20 32 64 100 256 512 1000 2048.
Please look at the picture and answer the following question about what you see.
The photo was taken outdoors on a sunny day; the colors are bright and the light is warm.
In this image, we can see several objects: a chair, a table, a vase with flowers, and a book.
The assistant should answer the question based on the image and explain the reasoning.
"""


def _sample_lines() -> list[str]:
    """The bundled sample's texts: each caption, and each SFT conversation on one line as `v1` renders it."""
    from stages.embedded.sample_content import PRETRAIN, SFT

    def one_line(text: str) -> str:
        return " ".join(text.split())

    dialogues = [" ".join(f"USER: {one_line(human)} ASSISTANT: {one_line(gpt)}" for human, gpt in c.rounds)
                 for c in SFT]
    return [caption for _, caption in PRETRAIN] + dialogues


def _corpus_lines() -> list[str]:
    return [line for line in _CORPUS.splitlines() if line] + _sample_lines()


def build_tiny_tokenizer():
    """Train the byte-level BPE on the built-in corpus and wrap it like Vicuna's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE, min_frequency=2, special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(_corpus_lines(), trainer=trainer)
    unk, bos, eos = _SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, bos_token=bos, eos_token=eos, pad_token=unk,
        add_bos_token=True, add_eos_token=False, model_max_length=2048, padding_side="right",
    )


def build_tiny_llm(out_dir: Path) -> None:
    """Write the tiny Llama model and its tokenizer (`save_pretrained` layout) into `out_dir`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    save_model(seeded_model(lambda: LlamaForCausalLM(config), namespace=TINY_LLM), out_dir,
               weights_name="model.safetensors")
    tokenizer.save_pretrained(out_dir)


register_embedded(TINY_LLM, version=TINY_LLM_VERSION, build_fn=build_tiny_llm)
