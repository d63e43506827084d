"""The fixed test suite: every cell is evaluated on exactly these token rows.

A test set is a list of samples; a sample is one row (heldout, cloze, qa) or `choices` rows
(multiple choice, one per ending). Rows are token windows of L = seq_len + 1 (the model reads
tokens[:, :-1] and predicts tokens[:, 1:], like a training batch), right-padded with EOS.

    loss_mask[r, t] is True iff tokens[r, t] is a target predicted from tokens[r, :t]:
      heldout       every real token after the first
      cloze         the final word's tokens           (LAMBADA style)
      qa            the answer's tokens               (SQuAD / TriviaQA style)
      choice        the ending's tokens, in each row  (HellaSwag style)

A sample's loss is the mean token loss over its mask; for multiple choice the predicted choice
is the ending with the lowest loss, compared with `answer`. Builders here read held-out
documents only, so no test text is ever trained on. Real benchmark formats are in
`s2l.data.benchmarks` and produce the same `Sample`s.
"""
from __future__ import annotations

import dataclasses
import json
import re
import zlib
from pathlib import Path

import numpy as np

from s2l.data.tokenizer import encode_batch


@dataclasses.dataclass(frozen=True)
class Sample:
    """A prompt and its candidate endings; `answer` indexes the true one (-1: a single target)."""

    prompt: str
    endings: tuple[str, ...]
    answer: int = -1


@dataclasses.dataclass
class TestSuite:
    """R rows of length L; S samples. Samples of one test set are contiguous, sets in order.

    tokens: int32 (R, L); loss_mask: bool (R, L); row_sample, row_choice: int64 (R,);
    sample_test_set: str (S,); answer: int64 (S,), -1 unless multiple choice;
    test_sets: list[str]; chance: {multiple-choice set: 1 / choices}.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    row_sample: np.ndarray
    row_choice: np.ndarray
    sample_test_set: np.ndarray
    answer: np.ndarray
    test_sets: list[str]
    chance: dict[str, float]

    @property
    def n_samples(self) -> int:
        return len(self.sample_test_set)

    def samples_of(self, test_set: str) -> np.ndarray:
        """int64 (S_set,): sample indices of one test set."""
        return np.flatnonzero(self.sample_test_set == test_set)

    def save(self, path: Path) -> None:
        np.savez(path / "test.npz", tokens=self.tokens, loss_mask=self.loss_mask,
                 row_sample=self.row_sample, row_choice=self.row_choice,
                 sample_test_set=self.sample_test_set.astype(str), answer=self.answer)
        (path / "test.json").write_text(json.dumps({"test_sets": self.test_sets,
                                                    "chance": self.chance}, indent=1))

    @classmethod
    def load(cls, path: Path) -> "TestSuite":
        z = np.load(path / "test.npz", allow_pickle=False)
        meta = json.loads((path / "test.json").read_text())
        return cls(tokens=z["tokens"], loss_mask=z["loss_mask"], row_sample=z["row_sample"],
                   row_choice=z["row_choice"], sample_test_set=z["sample_test_set"],
                   answer=z["answer"], test_sets=meta["test_sets"], chance=meta["chance"])


def _rng(name: str) -> np.random.Generator:
    # seeded by the test set's name only: the same config gives the same samples everywhere
    return np.random.default_rng(zlib.crc32(name.encode()))


# --------------------------------------------------------------------------- builders

def heldout_windows(ids: list[list[int]], eos: int, n: int, L: int) -> np.ndarray:
    """int32 (<= n, L): non-overlapping windows of the held-out documents' token stream (EOS
    between documents, as in training), evenly spaced over the stream."""
    parts = [p for doc in ids for p in (np.asarray(doc, dtype=np.int32), np.int32([eos]))]
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    k = len(stream) // L
    if k == 0:
        return np.zeros((0, L), np.int32)
    pick = np.unique(np.linspace(0, k - 1, min(n, k)).round().astype(int))
    return stream[:k * L].reshape(k, L)[pick]


_END = re.compile(r"\b([A-Za-z]{3,})(?=[.!?]['\")]?(\s|$))")


def cloze(docs: list[str], n: int, name: str, context_chars: int = 600) -> list[Sample]:
    """LAMBADA style: a passage ending at a sentence end; the target is its final word."""
    cands = [(i, m.start(1), m.group(1)) for i, d in enumerate(docs) for m in _END.finditer(d)
             if m.start(1) > 40]
    rng = _rng(name)
    pick = sorted(rng.choice(len(cands), size=min(n, len(cands)), replace=False)) if cands else []
    out = []
    for j in pick:
        i, pos, word = cands[j]
        ctx = " ".join(docs[i][max(0, pos - context_chars):pos].split()[1:])  # drop cut word
        out.append(Sample(ctx, (" " + word,)))
    return out


def choice(docs: list[str], n: int, name: str, choices: int, ending_words: int = 10,
           context_words: int = 60) -> list[Sample]:
    """HellaSwag style: a context and `choices` endings of up to `ending_words` words; the
    true one continues the context, the others are true endings of other documents."""
    rng = _rng(name)
    words = [d.split() for d in docs]
    ok = [i for i, w in enumerate(words) if len(w) >= 8]
    if len(ok) < choices:
        return []
    order = [ok[k] for k in rng.permutation(len(ok))]
    raw = []
    for k in range(n):
        w = words[order[k % len(order)]]
        s = int(rng.integers(4, len(w) - 3))
        raw.append((" ".join(w[max(0, s - context_words):s]),
                    " " + " ".join(w[s:s + ending_words]), order[k % len(order)]))
    out = []
    for k, (ctx, end, doc) in enumerate(raw):
        others = [r[1] for r in raw if r[2] != doc and r[1] != end]
        picks = rng.choice(len(others), size=choices - 1, replace=False)
        endings = [others[p] for p in picks]
        answer = int(rng.integers(choices))
        endings.insert(answer, end)
        out.append(Sample(ctx, tuple(endings), answer))
    return out


_MARKUP = re.compile(r"<[^>\n]{1,30}>|\[[^\]\n]*\]|^\s*\d+\.\s*")  # tags, [etym], "1."


def qa(docs: list[str], n: int, name: str, answer_words: int = 12) -> list[Sample]:
    """Question -> answer from glossary-like documents (first line = the term, then its
    definition): "Q: What does "term" mean?\\nA:" -> " <first sentence of the definition>"."""
    rng = _rng(name)
    out = []
    for i in rng.permutation(len(docs)):
        head, _, body = docs[i].strip().partition("\n")
        term = re.split(r"\s\\|,|\s\(", head)[0].strip()
        body = " ".join(_MARKUP.sub(" ", body).replace("{", "").replace("}", "").split())
        m = re.match(r"(.+?[.;])(\s|$)", body)
        definition = m.group(1) if m else body
        words = definition.split()[:answer_words]
        # cross-references ("See Snicker.") have no answer to learn: skip them
        if not (1 <= len(term) <= 40 and re.search("[A-Za-z]", term) and len(words) >= 3
                and words[0] not in ("See", "Same", "=")):
            continue
        out.append(Sample(f'Q: What does "{term}" mean?\nA:', (" " + " ".join(words),)))
        if len(out) == n:
            break
    return out


# --------------------------------------------------------------------------- encoding

def encode_samples(tok, samples: list[Sample], L: int):
    """Rows for samples: tokens int32 (R, L), loss_mask bool (R, L), row_sample, row_choice
    int64 (R,) with row_sample local to this list. When prompt + ending exceed L, the ending
    keeps its first tokens, leaving the prompt min(its length, L // 2) (a question must stay
    readable), and the prompt is cut from the left (its end, next to the ending, matters most)."""
    flat = [s.prompt for s in samples] + [e for s in samples for e in s.endings]
    ids = encode_batch(tok, flat) if flat else []
    prompts, endings = ids[:len(samples)], iter(ids[len(samples):])
    pad = tok.eos_token_id
    rows, masks, rs, rc = [], [], [], []
    for k, s in enumerate(samples):
        p = prompts[k] or [pad]
        es = [next(endings)[:L - min(len(p), L // 2)] for _ in s.endings]
        # one cut for all choices (fitting the longest): every ending sees the same context
        p = p[max(0, len(p) + max(map(len, es)) - L):]
        for c, e in enumerate(es):
            row = np.full(L, pad, np.int32)
            row[:len(p) + len(e)] = p + e
            m = np.zeros(L, bool)
            m[len(p):len(p) + len(e)] = True
            rows.append(row), masks.append(m), rs.append(k), rc.append(c)
    return (np.array(rows, np.int32).reshape(-1, L), np.array(masks, bool).reshape(-1, L),
            np.array(rs, np.int64), np.array(rc, np.int64))
