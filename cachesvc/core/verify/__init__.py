"""Hit verification: the stage between "the nearest entry clears the threshold" and "serve it".

An embedding blurs exactly the differences that make a cached answer wrong: "cancel" / "don't cancel", "2015" /
"2016", "Paris" / "Lyon", "litres to kg" / "kg to litres" score 0.89-0.99 cosine with all-MiniLM-L6-v2. A
`HitVerifier` sees both texts, both vectors and their similarity and accepts or rejects with a reason:

- `RuleVerifier`: mismatch checks on the texts (negation, numbers and dates, units, named entities, opposites
  and comparatives, "X to Y" direction). Pure Python, tens of microseconds.
- `ModelVerifier`: gradient-boosted trees over pair features (cosine, summaries of |u-v| and u*v, the rule
  signals, IDF-weighted word overlap, question kinds and lengths; optionally the pair's topic), stored as numpy
  arrays with their IDF table in `verifier_weights.npz` in `cachesvc/core`, trained by `bench/train_verifier.py
  --mix` on a mix of development domains (or on another file's pairs, served with `--verifier-weights`). The
  weights name the embedding model they were trained for; `build_verifier` checks it.
- `CombinedVerifier`: rules first (a hard veto), then the model.

No I/O at verification time; the weights are read once when the verifier is built.

One job per module: `protocol` (the seam and its values), `text` (lexicons and one text's analysis), `signals`
(mismatches between two texts), `rules`, `lexical` (the model's word-overlap features), `model` (the trees and
their weights), `build` (composition and the verifier for a mode).
"""

from cachesvc.core.verify.build import CombinedVerifier, build_verifier
from cachesvc.core.verify.lexical import LEXICAL_COUNT, Idf, lexical_features
from cachesvc.core.verify.model import WEIGHTS_FILE, ModelVerifier, ModelWeights, features
from cachesvc.core.verify.protocol import ACCEPT, HitVerifier, RejectReason, Verdict, VerifierMode, VerifyInput
from cachesvc.core.verify.rules import RuleVerifier, rule_reason
from cachesvc.core.verify.signals import SIGNAL_COUNT, Signals, signals

__all__ = [
    "ACCEPT", "LEXICAL_COUNT", "SIGNAL_COUNT", "WEIGHTS_FILE", "CombinedVerifier", "HitVerifier", "Idf",
    "ModelVerifier", "ModelWeights", "RejectReason", "RuleVerifier", "Signals", "Verdict", "VerifierMode",
    "VerifyInput", "build_verifier", "features", "lexical_features", "rule_reason", "signals",
]
