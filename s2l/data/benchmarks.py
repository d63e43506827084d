"""Real benchmark formats -> `Sample`s, loaded with `datasets.load_dataset`.

The same call reads a hub name on a cluster ("EleutherAI/lambada_openai") and local files in
tests ({path: json, data_files: [...]}), see `s2l.data.sources.load_rows`. The first
`samples` rows are used, in file order, so every cell sees the same ones.

    lambada     text                               -> context, " " + final word
    hellaswag   ctx, endings[4], label             -> ctx, " " + ending_i, answer = label
    squad       context, question, answers.text[0] -> "context\\nQuestion: q\\nAnswer:", " " + a
    trivia_qa   question, answer.value             -> "Question: q\\nAnswer:", " " + value
"""
from __future__ import annotations

from typing import Callable

from s2l.data.config import TestSetConfig
from s2l.data.sources import load_rows
from s2l.data.testsets import Sample


def lambada(row: dict) -> Sample | None:
    context, _, word = row["text"].strip().rpartition(" ")
    return Sample(context, (" " + word,)) if context and word else None


def hellaswag(row: dict) -> Sample | None:
    label = row.get("label")
    if label in (None, ""):  # the hub's test split has no labels
        return None
    # HellaSwag's activity label prefixes the context in the reference evaluation harness
    ctx = f"{row['activity_label']}: {row['ctx']}" if row.get("activity_label") else row["ctx"]
    return Sample(ctx, tuple(" " + e for e in row["endings"]), int(label))


def squad(row: dict) -> Sample | None:
    answers = row["answers"]["text"]
    if not answers:  # SQuAD v2 unanswerable questions
        return None
    return Sample(f"{row['context'].strip()}\nQuestion: {row['question'].strip()}\nAnswer:",
                  (" " + answers[0].strip(),))


def trivia_qa(row: dict) -> Sample | None:
    value = row["answer"]["value"]
    return Sample(f"Question: {row['question'].strip()}\nAnswer:", (" " + value.strip(),))


FORMATS: dict[str, tuple[Callable[[dict], Sample | None], tuple[str, ...]]] = {
    "lambada": (lambada, ("text",)),
    "hellaswag": (hellaswag, ("ctx", "endings", "label")),
    "squad": (squad, ("context", "question", "answers")),
    "trivia_qa": (trivia_qa, ("question", "answer")),
}


def load_benchmark(t: TestSetConfig) -> list[Sample]:
    """The first `t.samples` usable samples of a real benchmark."""
    parse, fields = FORMATS[t.kind]
    rows = load_rows(t.path, t.config, t.split, t.data_files)
    missing = [f for f in fields if f not in rows.column_names]
    if missing:
        raise ValueError(f"test set {t.name!r} ({t.kind}): {t.path!r} has no field {missing[0]!r}; "
                         f"fields are {rows.column_names}")
    out = []
    for row in rows:
        s = parse(row)
        if s is not None:
            out.append(s)
        if len(out) == t.samples:
            break
    return out
