"""Prompts as the official LongBench ``pred.py`` builds them: template, middle truncation, chat template.

Middle truncation keeps the first and last ``max_length // 2`` prompt tokens, decodes both halves (special
tokens skipped) and joins the text; the chat template is then applied unless the task is few-shot or code.
The templated text already holds the model's special tokens, so it is tokenized without adding more.
"""

from __future__ import annotations

from collections.abc import Mapping

from transformers import PreTrainedTokenizerBase


def fill_template(template: str, record: Mapping[str, object]) -> str:
    """The raw prompt: the task template formatted with the record's fields."""
    return template.format(**record)


def truncate_middle(prompt: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    """Cut the middle of a prompt longer than ``max_length`` tokens, keeping both ends."""
    ids = tokenizer(prompt, truncation=False).input_ids
    if len(ids) <= max_length:
        return prompt
    half = max_length // 2
    return tokenizer.decode(ids[:half], skip_special_tokens=True) + tokenizer.decode(ids[-half:], skip_special_tokens=True)


def render_prompt(
    template: str,
    record: Mapping[str, object],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    chat: bool,
) -> tuple[str, bool]:
    """A record's final prompt text, and whether tokenizing it adds special tokens (not when a chat template put
    them in the text)."""
    prompt = truncate_middle(fill_template(template, record), tokenizer, max_length)
    if chat and tokenizer.chat_template is not None:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return prompt, False
    return prompt, True


def build_prompt_ids(
    template: str,
    record: Mapping[str, object],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    chat: bool,
) -> list[int]:
    """Token ids of a record's final prompt."""
    prompt, special = render_prompt(template, record, tokenizer, max_length, chat)
    return tokenizer(prompt, add_special_tokens=special).input_ids
