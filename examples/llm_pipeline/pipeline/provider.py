"""A stand-in for a hosted model endpoint.

A real pipeline sends the prompt to an LLM and waits 30-60 s for the answer.
This provider does no I/O and never sleeps: it "thinks" by hashing the
prompt over and over (real, deterministic CPU work), then turns the final
digest into a small spec in JSON. The same prompt and cost always give the
same answer, offline.

LLM_PIPELINE_COST sets the number of hashing rounds (default DEFAULT_COST,
one to two seconds per call on a current CPU core). The answer depends on
it, the way a real answer depends on the model version: a different cost
gives different, equally valid specs.
"""

import hashlib
import json
import os

MODEL = "toy-spec-1"
DEFAULT_COST = 5_000_000

VERBS = ("scale", "blend", "shift", "fold", "mix", "weigh", "round", "score")
NOUNS = ("price", "total", "rate", "frame", "speed", "bonus", "fee", "step")
PARAMS = ("x", "y", "z")
OPS = ("+", "-", "*")


def cost():
    """The number of hashing rounds per call."""
    value = os.environ.get("LLM_PIPELINE_COST", "").strip()
    return int(value) if value else DEFAULT_COST


def generate(prompt: str) -> str:
    """The model's answer to `prompt`: a JSON text listing functions, each
    with a name, parameters, a body (an arithmetic expression over the
    parameters) and example calls with their results."""
    entropy = _Entropy(_think(prompt, cost()))
    functions = []
    names = set()
    for _ in range(3 + entropy.below(3)):
        name = f"{VERBS[entropy.below(len(VERBS))]}_{NOUNS[entropy.below(len(NOUNS))]}"
        if name in names:
            name = f"{name}_{len(names)}"
        names.add(name)
        params = list(PARAMS[: 1 + entropy.below(len(PARAMS))])
        tree = _tree(entropy, params, depth=3)
        examples = []
        for _ in range(3):
            args = [entropy.below(15) - 5 for _ in params]
            examples.append({"args": args, "result": _value(tree, dict(zip(params, args)))})
        functions.append({"name": name, "params": params, "body": _text(tree, top=True), "examples": examples})
    return json.dumps({"model": MODEL, "prompt": prompt, "functions": functions}, indent=2)


def _think(prompt, rounds):
    digest = hashlib.sha256(f"{MODEL}\n{prompt}".encode()).digest()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest


class _Entropy:
    """Numbers drawn from a digest (and digests of it), the same everywhere."""

    def __init__(self, seed):
        self.seed = seed
        self.block = b""
        self.counter = 0

    def below(self, n):
        if not self.block:
            self.counter += 1
            self.block = hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
        byte, self.block = self.block[0], self.block[1:]
        return byte % n


def _tree(entropy, params, depth):
    """A random expression: a parameter, a small integer, or (op, left, right)."""
    if depth == 0 or entropy.below(4) == 0:
        if entropy.below(3) == 0:
            return 1 + entropy.below(9)
        return params[entropy.below(len(params))]
    op = OPS[entropy.below(len(OPS))]
    return (op, _tree(entropy, params, depth - 1), _tree(entropy, params, depth - 1))


def _text(tree, top=False):
    if not isinstance(tree, tuple):
        return str(tree)
    op, left, right = tree
    text = f"{_text(left)} {op} {_text(right)}"
    return text if top else f"({text})"


def _value(tree, env):
    if isinstance(tree, int):
        return tree
    if isinstance(tree, str):
        return env[tree]
    op, left, right = tree
    a, b = _value(left, env), _value(right, env)
    return a + b if op == "+" else a - b if op == "-" else a * b
