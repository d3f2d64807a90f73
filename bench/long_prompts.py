"""Long prompts through the real gRPC server: changes in the details must miss, changes of form must hit.

    .venv/bin/python bench/long_prompts.py --prompts ../shared/data/sharegpt_first_prompts.jsonl

Development cases built from real traffic: a seeded sample of ShareGPT first prompts over 150 characters, each
paired with perturbations that change the answer (label 0):

- instruction: an instruction appended ("Answer in French.", "Also include a table ...", ...);
- number: one number in the prompt changed;
- swap: two content words of the prompt swapped (swapped variables, roles, order);
- replace: one content word (a name if there is one) replaced by a content word of another prompt (another plot
  element, entity or subject);

and perturbations that keep it (label 1): reformatting (sentences on their own lines), whitespace, casing, and
a typo fix (the stored prompt has two adjacent letters swapped in one word; the lookup is the original).

Each pair is stored and looked up in a scope of its own, once per verifier (namespaces with their own verifier,
on one server, so each text is embedded once), at threshold 0 with explain: the verifier's verdict and the
similarity give the outcome at any threshold. The table gives, per verifier and threshold, the precision of the
hits served (right = label 1), the share of label-1 pairs served, and per perturbation kind the share served.
Writes bench/out/long-prompts.json; prints the tables (Markdown with --markdown-out) and the runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import DEFAULT_MODEL_DIR, OUT_DIR, command_line, machine, markdown_table, text_table, utc_now, write_json

from cachesvc.core.verify.text import STOPWORDS
from cachesvc_client import AsyncCacheClient, CandidateOutcome, Scope

MIN_CHARS, MAX_CHARS = 150, 2000
VERIFIERS = ("off", "rules", "combined")
THRESHOLDS = (0.80, 0.85, 0.90, 0.95)
INSTRUCTIONS = (
    "Answer in French.", "Also include a summary table at the end.", "Make it funny.",
    "Use no more than 100 words.", "Focus on the security aspects.", "Write it in the style of Shakespeare.",
    "Explain it as if I were five years old.", "Give three examples.",
)
_WORD = re.compile(r"[A-Za-z]{4,}")


@dataclass(frozen=True)
class Case:
    stored: str
    query: str
    label: int
    kind: str


def _content_words(text: str) -> list[str]:
    words = [w for w in _WORD.findall(text) if w.lower() not in STOPWORDS]
    return [w for w in dict.fromkeys(words) if text.count(w) == 1]


def _typo(text: str, rng: random.Random) -> str | None:
    words = [m for m in re.finditer(r"[a-z]{6,}", text)]
    if not words:
        return None
    m = rng.choice(words)
    w = m.group(0)
    i = rng.randrange(1, len(w) - 2)
    typo = w[:i] + w[i + 1] + w[i] + w[i + 2:]
    return text[:m.start()] + typo + text[m.end():]


def perturb(text: str, other: str, rng: random.Random) -> list[Case]:
    cases = [Case(text, f"{text.rstrip()} {rng.choice(INSTRUCTIONS)}", 0, "instruction")]
    numbers = list(re.finditer(r"\b\d+\b", text))
    if numbers:
        m = rng.choice(numbers)
        cases.append(Case(text, text[:m.start()] + str(int(m.group(0)) + rng.randint(1, 9)) + text[m.end():], 0,
                          "number"))
    words = _content_words(text)
    if len(words) >= 2:
        a, b = rng.sample(words, 2)
        swapped = re.sub(rf"\b({re.escape(a)}|{re.escape(b)})\b", lambda m: b if m.group(0) == a else a, text)
        cases.append(Case(text, swapped, 0, "swap"))
    replacements = [w for w in _content_words(other) if w.lower() not in text.lower()]
    if words and replacements:
        names = [w for w in words if w[0].isupper()]
        old = rng.choice(names or words)
        cases.append(Case(text, re.sub(rf"\b{re.escape(old)}\b", rng.choice(replacements), text), 0, "replace"))
    cases.append(Case(text, re.sub(r"([.!?]) +", r"\1\n", text), 1, "reformat"))
    cases.append(Case(text, "  " + text.replace(" ", "  ") + "\n", 1, "whitespace"))
    cases.append(Case(text, text.lower() if rng.random() < 0.5 else text.upper(), 1, "casing"))
    typo = _typo(text, rng)
    if typo is not None:
        cases.append(Case(typo, text, 1, "typo fix"))
    return [c for c in cases if c.query != c.stored]


def build_cases(path: Path, n: int, seed: int) -> list[Case]:
    texts: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if MIN_CHARS < len(text) <= MAX_CHARS:
                texts.append(text)
    texts = list(dict.fromkeys(texts))
    rng = random.Random(seed)
    sample = rng.sample(texts, min(n, len(texts)))
    cases: list[Case] = []
    for i, text in enumerate(sample):
        cases += perturb(text, sample[(i + 1) % len(sample)], rng)
    return cases


async def judge(client: AsyncCacheClient, cases: list[Case], concurrency: int) -> dict[str, list[tuple[float, bool]]]:
    """Per verifier, per case: (similarity, accepted by the verifier)."""
    out: dict[str, list[tuple[float, bool]]] = {v: [(0.0, False)] * len(cases) for v in VERIFIERS}
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int, verifier: str) -> None:
        async with semaphore:
            scope = Scope(namespace=verifier, context=f"case-{i}")
            await client.store(cases[i].stored, "answer", scope=scope)
            found = await client.lookup(cases[i].query, scope=scope, min_similarity=0.0, explain=True)
            best = found.candidates[0] if found.candidates else None
            if found.exact:  # the same prompt once normalised (whitespace): served without a verifier
                out[verifier][i] = (1.0, True)
            elif best is not None:
                out[verifier][i] = (best.similarity, best.outcome is CandidateOutcome.SERVED)

    # Verifiers one after another per case: the second and third lookups reuse the first one's embedding.
    for verifier in VERIFIERS:
        await asyncio.gather(*(one(i, verifier) for i in range(len(cases))))
    return out


def tables(cases: list[Case], verdicts: dict[str, list[tuple[float, bool]]]) -> tuple[list[list[object]],
                                                                                      list[list[object]]]:
    kinds = list(dict.fromkeys(c.kind for c in cases))
    summary, by_kind = [], []
    for verifier in VERIFIERS:
        for t in THRESHOLDS:
            served = [i for i, (s, ok) in enumerate(verdicts[verifier]) if ok and s >= t]
            right = sum(cases[i].label for i in served)
            positives = sum(c.label for c in cases)
            summary.append([verifier, f"{t:.2f}", len(served), f"{right / len(served):.3f}" if served else "n/a",
                            f"{right / positives:.3f}", len(served) - right])
            row: list[object] = [verifier, f"{t:.2f}"]
            for kind in kinds:
                members = [i for i, c in enumerate(cases) if c.kind == kind]
                row.append(f"{sum(1 for i in members if i in set(served)) / len(members):.2f}")
            by_kind.append(row)
    return summary, by_kind


async def main_async(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    cases = build_cases(args.prompts, args.n, args.seed)
    from cachesvc.app import App
    from cachesvc.config import load_settings

    with tempfile.TemporaryDirectory(prefix="cachesvc-long-") as data_dir:
        settings = load_settings(environ={}, flags={
            "host": "127.0.0.1", "port": "0", "metrics_port": "-1", "model_dir": str(args.model_dir),
            "data_dir": data_dir, "grace_seconds": "1", "fsync": "no", "memo_size": "20000",
            "namespace_verifiers": ",".join(f"{v}={v}" for v in VERIFIERS),
        })
        async with App(settings) as app, AsyncCacheClient(f"127.0.0.1:{app.port}", timeout=300.0) as client:
            verdicts = await judge(client, cases, args.concurrency)
    summary, by_kind = tables(cases, verdicts)
    kinds = list(dict.fromkeys(c.kind for c in cases))
    counts = {k: sum(1 for c in cases if c.kind == k) for k in kinds}
    summary_headers = ["verifier", "threshold", "hits", "precision", "label-1 pairs served", "wrong hits"]
    keeps = {c.kind for c in cases if c.label}
    kind_headers = ["verifier", "threshold",
                    *(f"{k} ({'keeps' if k in keeps else 'changes'}, n={counts[k]})" for k in kinds)]
    title = (f"{args.prompts.name}: {len(cases)} long-prompt pairs from {args.n} prompts over {MIN_CHARS} characters "
             f"(seed {args.seed}), {sum(c.label for c in cases)} keep the answer")
    print(f"\n{title}\n{text_table(summary_headers, summary)}\n\nshare served, per perturbation\n"
          f"{text_table(kind_headers, by_kind)}")
    elapsed = time.perf_counter() - started
    write_json(args.out_dir / "long-prompts.json", {
        "date": utc_now(), "command": command_line(), "machine": machine(), "cases": len(cases),
        "seconds": round(elapsed, 1), "summary": summary, "by_kind": by_kind, "kinds": counts,
        "examples": [c.__dict__ for c in cases[:20]],
    })
    if args.markdown_out is not None:
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        args.markdown_out.write_text(f"**{title}**\n\n{markdown_table(summary_headers, summary)}\n\n"
                                     f"{markdown_table(kind_headers, by_kind)}\n", encoding="utf-8")
    print(f"\nruntime {elapsed:.1f} s; load average {machine()['load_average']}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=Path, required=True, help="ShareGPT-style stream ({'text'} per line)")
    parser.add_argument("--n", type=int, default=150, help="prompts sampled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--markdown-out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
