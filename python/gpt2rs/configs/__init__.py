"""Model configs shipped with the package.

`gpt2_default_config.json` is GPT-2 small's config.json as the Hugging Face
hub has it (openai-community/gpt2): the default of `gpt2rs-train
--config-path`, and the file the NNTile notebook's `--config-path` names.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
#: GPT-2 small (124M): 12 layers, 12 heads, n_embd 768, 1024 positions, vocab 50257.
GPT2_DEFAULT_CONFIG = CONFIG_DIR / "gpt2_default_config.json"


def default_config_path() -> Path:
    """The path of the shipped GPT-2 small config.json."""
    return GPT2_DEFAULT_CONFIG


__all__ = ["CONFIG_DIR", "GPT2_DEFAULT_CONFIG", "default_config_path"]
