"""Naturalness: how human a user turn reads, through a pluggable detector.

==========================  ==========================================================
``http:<url>``              a detector service: POST ``{"texts": [...]}``, answers
                            ``{"scores": [...]}``, each the probability a human wrote it
``judge``                   the evaluation's ``--judge`` model, asked for 0-100
``local:<dir>``             a classifier trained here with ``userlm train-detector``
==========================  ==========================================================

The local classifier is a scikit-learn pipeline: word 1-2-gram and character 2-4-gram TF-IDF
features and a logistic regression, trained on labelled human and machine text::

    userlm train-detector --human real_user_turns.txt --machine generated_turns.txt --out detector/
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ...errors import ConfigurationError, UserError
from ...files import replacing, write_text
from ...prompts import fill_prompt
from .judge import CachedJudge


class Detector(Protocol):
    name: str

    async def human_likelihood(self, texts: list[str]) -> list[float | None]: ...


class HTTPDetector:
    """A detector behind an HTTP service (batches of 64 texts per request)."""

    def __init__(self, url: str, *, timeout_s: float = 60.0, batch: int = 64):
        self.name, self.url, self.timeout_s, self.batch = f"http:{url}", url, timeout_s, batch

    async def human_likelihood(self, texts: list[str]) -> list[float | None]:
        import httpx

        from ...models.retry import (
            Breaker,
            ConnectionLost,
            MalformedResponse,
            RateLimited,
            RequestTimeout,
            RetryPolicy,
            ServerError,
            TransientError,
            parse_json,
            with_retries,
        )

        policy, breaker = RetryPolicy(max_retries=3), Breaker(self.url, 0)
        out: list[float | None] = []
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:

            async def scores_of(part: list[str]) -> list:
                try:
                    response = await client.post(self.url, json={"texts": part})
                except httpx.TimeoutException as exc:
                    raise RequestTimeout(f"no answer within {self.timeout_s:g} s") from exc
                except httpx.TransportError as exc:
                    raise ConnectionLost(f"{type(exc).__name__}: {exc}") from exc
                if response.status_code == 429 or response.status_code >= 500:
                    raise (RateLimited if response.status_code == 429 else ServerError)(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise ConfigurationError(f"detector {self.url} answered HTTP {response.status_code}; check the URL and the service.")
                scores = parse_json(response.content)
                if not isinstance(scores, dict) or not isinstance(scores.get("scores"), list):
                    raise MalformedResponse('the answer is not {"scores": [...]}')
                return scores["scores"]

            for i in range(0, len(texts), self.batch):
                part = texts[i : i + self.batch]
                try:
                    scores = await with_retries(lambda: scores_of(part), policy, breaker)
                except TransientError as exc:
                    raise ConfigurationError(
                        f"detector {self.url} did not answer with {{\"scores\": [...]}} ({type(exc).__name__}: {exc}); check the URL and the service."
                    ) from None
                if len(scores) != len(part):
                    raise ConfigurationError(f"detector {self.url} returned {len(scores)} scores for {len(part)} texts.")
                try:
                    out.extend(None if s is None else float(s) for s in scores)
                except (TypeError, ValueError):
                    raise ConfigurationError(f"detector {self.url} returned scores that are not numbers.") from None
        return out


class JudgeDetector:
    """Asks the judge model how likely each text is human-written."""

    def __init__(self, judge: CachedJudge):
        self.judge = judge
        self.name = f"judge:{judge.name}"

    async def human_likelihood(self, texts: list[str]) -> list[float | None]:
        import asyncio

        return list(await asyncio.gather(*(self.judge.score(fill_prompt("human_likelihood_judge.txt", text=t)) for t in texts)))


class LocalDetector:
    """A classifier trained with :func:`train_detector`, loaded from its directory."""

    def __init__(self, path: str | Path):
        import joblib

        path = Path(path)
        model_file = path / "detector.joblib"
        if not model_file.exists():
            raise UserError(f"{path}: no detector.joblib here; train one with `userlm train-detector`.")
        self.pipeline = joblib.load(model_file)
        self.name = f"local:{path}"

    async def human_likelihood(self, texts: list[str]) -> list[float | None]:
        if not texts:
            return []
        human = list(self.pipeline.classes_).index("human")
        return [float(p[human]) for p in self.pipeline.predict_proba(texts)]


def detector(spec: str, judge: CachedJudge | None) -> Detector:
    """Resolve ``http:<url>``, ``judge`` or ``local:<dir>``."""
    kind, _, rest = spec.partition(":")
    if kind == "http" and rest:
        return HTTPDetector(rest)
    if kind == "judge":
        if judge is None:
            raise UserError("--detector judge needs --judge SPEC.")
        return JudgeDetector(judge)
    if kind == "local" and rest:
        return LocalDetector(rest)
    raise UserError(f"unknown detector {spec!r}; use http:<url>, judge or local:<dir>.")


@dataclass
class DetectorReport:
    train_size: int
    test_size: int
    accuracy: float  #: on the held-out fifth
    human_mean_on_test: float  #: mean human-likelihood of held-out human texts
    machine_mean_on_test: float


def train_detector(human: Sequence[str], machine: Sequence[str], out: str | Path, *, seed: int = 0) -> DetectorReport:
    """Fit the classifier on 4/5 of the texts, report accuracy on the other fifth, then refit on
    everything and save ``detector.joblib`` and ``detector.json`` in ``out``."""
    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    if len(human) < 5 or len(machine) < 5:
        raise UserError("train-detector needs at least 5 human and 5 machine texts.")

    def pipeline():
        features = make_union(
            TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=1, sublinear_tf=True, lowercase=False),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True, lowercase=False),
        )
        return make_pipeline(features, LogisticRegression(max_iter=2000, C=4.0))

    rows = [(t, "human") for t in human] + [(t, "machine") for t in machine]
    random.Random(seed).shuffle(rows)
    cut = max(1, len(rows) // 5)
    test, train = rows[:cut], rows[cut:]
    model = pipeline().fit([t for t, _ in train], [y for _, y in train])
    predicted = model.predict([t for t, _ in test])
    accuracy = sum(p == y for p, (_, y) in zip(predicted, test)) / len(test)
    human_col = list(model.classes_).index("human")
    probs = model.predict_proba([t for t, _ in test])[:, human_col]
    h = [p for p, (_, y) in zip(probs, test) if y == "human"]
    m = [p for p, (_, y) in zip(probs, test) if y == "machine"]
    report = DetectorReport(len(train), len(test), accuracy, sum(h) / len(h) if h else float("nan"), sum(m) / len(m) if m else float("nan"))
    final = pipeline().fit([t for t, _ in rows], [y for _, y in rows])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with replacing(out / "detector.joblib") as tmp:
        joblib.dump(final, tmp)
    write_text(out / "detector.json", json.dumps({**report.__dict__, "human": len(human), "machine": len(machine)}, indent=2))
    return report


def read_texts(path: str | Path) -> list[str]:
    """Texts from a file: a JSONL of conversation records (their user turns), a JSONL of strings or
    ``{"text": ...}`` objects, or plain text with one text per line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; give a text or JSONL file.")
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            texts.append(line.strip())
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg}); write one JSON value per line.") from None
        if isinstance(row, str):
            texts.append(row)
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            texts.append(row["text"])
        elif isinstance(row, dict) and isinstance(row.get("messages"), list):
            texts.extend(m["content"] for m in row["messages"] if isinstance(m, dict) and m.get("role") == "user" and m.get("content"))
        else:
            raise UserError(f"{path}:{number}: expected a string, {{\"text\": ...}} or a conversation record.")
    return texts
