"""Text similarity metrics of OpenAI's `text_similarity` grader, in pure Python, each in
[0, 1]. Texts are lower-cased and split into words and punctuation marks.

- fuzzy_match: the normalized indel similarity of the two strings (difflib's ratio,
  2 * matches / total characters; rapidfuzz's `fuzz.ratio` / 100 is the same measure);
- bleu: sentence BLEU over 1- to 4-grams (geometric mean, brevity penalty), with Lin and
  Och's +1 smoothing of the 2- to 4-gram precisions so a short answer is not 0;
- gleu: Google-BLEU (Wu et al. 2016): min(precision, recall) over all 1- to 4-grams;
- meteor: METEOR with exact unigram matches (no stemming or synonyms: no WordNet here):
  the harmonic mean weighted 9:1 to recall, times 1 - 0.5 * (chunks / matches)^3;
- rouge_1 .. rouge_5: the F1 of n-gram overlap; rouge_l: the F1 of the longest common
  subsequence of words.

`cosine` needs embeddings: see `trainer.graders.remote`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Callable

TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def fuzzy_match(candidate: str, reference: str) -> float:
    if not candidate and not reference:
        return 1.0
    return difflib.SequenceMatcher(None, candidate, reference, autojunk=False).ratio()


def bleu(candidate: str, reference: str, max_n: int = 4) -> float:
    cand, ref = tokens(candidate), tokens(reference)
    if not cand or not ref:
        return float(cand == ref)
    logs = []
    for n in range(1, max_n + 1):
        total = max(len(cand) - n + 1, 0)
        matches = sum((ngrams(cand, n) & ngrams(ref, n)).values())
        if n > 1:  # Lin & Och: +1 on the higher orders
            matches, total = matches + 1, total + 1
        if matches == 0 or total == 0:
            return 0.0
        logs.append(math.log(matches / total))
    brevity = 1.0 if len(cand) > len(ref) else math.exp(1 - len(ref) / len(cand))
    return brevity * math.exp(sum(logs) / max_n)


def gleu(candidate: str, reference: str, max_n: int = 4) -> float:
    cand, ref = tokens(candidate), tokens(reference)
    matches = cand_total = ref_total = 0
    for n in range(1, max_n + 1):
        c, r = ngrams(cand, n), ngrams(ref, n)
        matches += sum((c & r).values())
        cand_total += sum(c.values())
        ref_total += sum(r.values())
    if not cand_total or not ref_total:
        return float(cand == ref)
    return min(matches / cand_total, matches / ref_total)


def meteor(candidate: str, reference: str) -> float:
    cand, ref = tokens(candidate), tokens(reference)
    if not cand or not ref:
        return float(cand == ref)
    used = [False] * len(ref)
    alignment: list[int] = []  # reference position of each matched candidate word, in order
    for word in cand:
        for j, other in enumerate(ref):
            if not used[j] and other == word:
                used[j] = True
                alignment.append(j)
                break
        else:
            alignment.append(-1)
    matched = [j for j in alignment if j >= 0]
    if not matched:
        return 0.0
    precision, recall = len(matched) / len(cand), len(matched) / len(ref)
    fmean = 10 * precision * recall / (recall + 9 * precision)
    chunks, previous = 0, None
    for j in alignment:
        if j < 0:
            previous = None
            continue
        if previous is None or j != previous + 1:
            chunks += 1
        previous = j
    return fmean * (1 - 0.5 * (chunks / len(matched)) ** 3)


def _f1(overlap: int, cand_total: int, ref_total: int) -> float:
    if not overlap or not cand_total or not ref_total:
        return 0.0
    precision, recall = overlap / cand_total, overlap / ref_total
    return 2 * precision * recall / (precision + recall)


def rouge_n(candidate: str, reference: str, n: int) -> float:
    c, r = ngrams(tokens(candidate), n), ngrams(tokens(reference), n)
    if not c and not r:
        return float(candidate.strip().lower() == reference.strip().lower())
    return _f1(sum((c & r).values()), sum(c.values()), sum(r.values()))


def rouge_l(candidate: str, reference: str) -> float:
    cand, ref = tokens(candidate), tokens(reference)
    if not cand or not ref:
        return float(cand == ref)
    row = [0] * (len(ref) + 1)
    for word in cand:
        previous_diagonal = 0
        for j, other in enumerate(ref, 1):
            above = row[j]
            row[j] = previous_diagonal + 1 if word == other else max(row[j], row[j - 1])
            previous_diagonal = above
    return _f1(row[-1], len(cand), len(ref))


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    **{f"rouge_{n}": (lambda c, r, n=n: rouge_n(c, r, n)) for n in range(1, 6)},
    "rouge_l": rouge_l,
}
EVALUATION_METRICS: tuple[str, ...] = ("cosine", *METRICS)
