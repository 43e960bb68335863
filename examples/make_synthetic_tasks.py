"""Generate and build the synthetic task suite (tasks/synthetic.py): nine families (arithmetic, counting,
sorting, brackets, list operations, copy/repeat, context recall, logic, comparison) at difficulty levels 1-5,
in text and chat form, with held-out probe files per family and level.

    python examples/make_synthetic_tasks.py --output-dir data/tasks --num-per-level 3000 --seed 0

Writes to the output directory:
  raw/level<d>/text.jsonl, chat.json     the training problems of level d ({"text"} documents, ShareGPT records),
                                         the same count of every family, shuffled
  text/level<d>/, chat/level<d>/         built text and chat datasets (byte tokenizer; 5% of the problems validate)
  text/dataset.json, chat/dataset.json   {"kind": "leveled", "levels": {...}}: a mixture source whose stages pick
                                         the levels (`difficulty: 3` draws rows from levels 1-3)
  probes/text/level<d>/<family>_L<d>.jsonl, probes/chat/level<d>/...   held-out problems ({"prompt", "answer"})

Held-out values (see tasks/synthetic.py) never occur in any training or validation problem of any level; a probe
file holds up to --num-probes distinct held-out problems (fewer where a level has fewer, e.g. one-digit sums).
Same seed, same files.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset.build_chat_dataset import ChatBuildConfig, build as build_chat  # noqa: E402
from dataset.build_text_dataset import TextBuildConfig, build as build_text  # noqa: E402
from tasks.synthetic import (  # noqa: E402
    FAMILIES, LEVELS, Problem, chat_form, chat_probe, heldout_problems, sample, text_form, text_probe)
from utils.cli import exit_on_bad_input  # noqa: E402
from utils.files import atomic_write  # noqa: E402


def training_problems(level: int, num: int, seed: int) -> list[Problem]:
    """`num` problems of one level (the families in equal shares), none with a held-out value, shuffled."""
    problems = []
    for k, family in enumerate(FAMILIES):
        rng = random.Random(f"train:{family}:{level}:{seed}")
        problems += [sample(family, level, rng, seed) for _ in range(num // len(FAMILIES) + (k < num % len(FAMILIES)))]
    random.Random(f"order:{level}:{seed}").shuffle(problems)
    return problems


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def write_leveled(directory: Path, levels: list[int], seed: int) -> None:
    meta = {"kind": "leveled", "levels": {str(d): f"level{d}" for d in levels}, "families": list(FAMILIES),
            "seed": seed}
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "dataset.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", default="data/tasks")
    ap.add_argument("--num-per-level", type=int, default=3000, help="training + validation problems per level")
    ap.add_argument("--num-probes", type=int, default=50, help="held-out problems per family and level (at most)")
    ap.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    ap.add_argument("--max-length", type=int, default=256, help="positions of a chat sample (--max-length of the "
                                                                "chat builder)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.num_per_level < 2 * len(FAMILIES) or args.num_probes < 1 or not set(args.levels) <= set(LEVELS):
        ap.error(f"need --num-per-level >= {2 * len(FAMILIES)}, --num-probes >= 1 and --levels among {list(LEVELS)}")
    out = Path(args.output_dir)
    levels = sorted(set(args.levels))
    counts = {}
    for level in levels:
        problems = training_problems(level, args.num_per_level, args.seed)
        raw = out / "raw" / f"level{level}"
        write_jsonl(raw / "text.jsonl", [{"text": text_form(p)} for p in problems])
        raw.joinpath("chat.json").write_text("[\n" + ",\n".join(json.dumps(chat_form(p)) for p in problems) + "\n]\n")
        with exit_on_bad_input():
            build_text(TextBuildConfig(input=[str(raw / "text.jsonl")], output_dir=str(out / "text" / f"level{level}"),
                                       seed=args.seed))
            build_chat(ChatBuildConfig(input_file=str(raw / "chat.json"),
                                       output_dir=str(out / "chat" / f"level{level}"), format="sharegpt",
                                       max_length=args.max_length, seed=args.seed))
        for family in FAMILIES:
            held = heldout_problems(family, level, args.num_probes, args.seed)
            counts[family, level] = len(held)
            name = f"{family}_L{level}.jsonl"
            if not held:  # a probe file needs at least one problem
                continue
            write_jsonl(out / "probes" / "text" / f"level{level}" / name, [text_probe(p) for p in held])
            write_jsonl(out / "probes" / "chat" / f"level{level}" / name, [chat_probe(p) for p in held])
    for form in ("text", "chat"):
        write_leveled(out / form, levels, args.seed)
    print(f"wrote {out}: levels {levels}, {args.num_per_level} problems each, text/ and chat/ datasets; held-out "
          "probes per family and level:")
    for family in FAMILIES:
        print(f"  {family:16s} " + " ".join(f"L{level}: {counts[family, level]:3d}" for level in levels))


if __name__ == "__main__":
    main()
