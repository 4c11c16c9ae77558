"""An offline tokenizer for the randomly initialised ``tiny`` model, learnt from the training text.

Nothing can be downloaded, so the ``tiny`` preset cannot borrow a pretrained vocabulary; a
byte-level BPE learnt from the training conversations covers any text (bytes are the fallback)
while giving the frequent words of the data single tokens, which keeps sequences short.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ..processing import IMAGE_TOKEN

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048, extra_special_tokens: Iterable[str] = (),
                    model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE over ``texts``; ids 0..3 are unk/bos/eos/pad and ``<image>`` follows them.

    ``extra_special_tokens``: strings that must stay whole (chat-template markers).
    """
    specials = [*SPECIAL_TOKENS.values(), IMAGE_TOKEN, *[t for t in extra_special_tokens if t]]
    specials = list(dict.fromkeys(specials))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, padding_side="right",
        extra_special_tokens={"image_token": IMAGE_TOKEN}, **SPECIAL_TOKENS,
        additional_special_tokens=specials[len(SPECIAL_TOKENS) + 1:] or None,
    )
