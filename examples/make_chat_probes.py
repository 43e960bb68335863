"""Probe files for a model fine-tuned on examples/make_synthetic_chat.py conversations: {"prompt", "answer"}
with the full reply the synthetic assistant gives, for exact-match scoring (evaluators/probes.py).

    python examples/make_chat_probes.py --output-dir data/synthetic-chat-raw/probes --seed 0

  chat_facts.jsonl          capitals, colours, animal sounds, days, opposites: the questions of the training
                            conversations (a fact is always answered the same way, so this is memorisation)
  chat_arithmetic_heldout.jsonl  sums, differences and products whose numbers the training data never contains
                            (the held-out rule of make_synthetic_chat.py, same --seed)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.cli import output_directory  # noqa: E402

spec = importlib.util.spec_from_file_location("make_synthetic_chat", Path(__file__).with_name("make_synthetic_chat.py"))
chat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chat)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", type=output_directory, default="data/synthetic-chat-raw/probes")
    ap.add_argument("--num", type=int, default=50, help="prompts per file")
    ap.add_argument("--seed", type=int, default=0, help="the --seed of make_synthetic_chat.py")
    args = ap.parse_args(argv)
    if args.num < 1:
        ap.error(f"need --num >= 1 (got {args.num})")
    rng = random.Random(f"probes:{args.seed}")
    facts = {}
    while len(facts) < args.num:  # distinct questions
        question, answer = chat.fact_exchange(rng)
        facts[question] = answer
    arithmetic = []
    for row in chat.heldout_problems(args.num, args.seed):  # the problem is in the prompt, e.g. "What is 3 + 4?"
        x, op, y = _operands(row["prompt"])
        a, b = int(x), int(y)
        if str(chat.OPS[op][1](a, b)) != row["answer"]:
            raise ValueError(f"cannot read the problem of {row['prompt']!r}")
        arithmetic.append({"prompt": row["prompt"], "answer": chat.arithmetic_answer(a, op, b)})
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in {"chat_facts": [{"prompt": q, "answer": a} for q, a in facts.items()],
                       "chat_arithmetic_heldout": arithmetic}.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {out}: chat_facts.jsonl, chat_arithmetic_heldout.jsonl ({args.num} each)")


def _operands(prompt: str) -> tuple[str, str, str]:
    """(a, symbol, b) of a question written by make_synthetic_chat.arithmetic_question."""
    words = {w: s for s, (w, _) in chat.OPS.items()}
    tokens = prompt.rstrip("?.").replace("= ?", "").split()
    i = next(k for k, t in enumerate(tokens) if t in chat.OPS or t in words)
    return tokens[i - 1], words.get(tokens[i], tokens[i]), tokens[i + 1]


if __name__ == "__main__":
    main()
