"""jrft: parameter-efficient and private finetuning of language transformers."""

__version__ = "0.1.0"
