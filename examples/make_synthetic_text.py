"""Generate a synthetic corpus of short stories from a templated grammar, plus probe files, for
pretraining small language models on a CPU in minutes.

    python examples/make_synthetic_text.py --output-dir data/synthetic-text-raw --num-stories 3000 --seed 0

Writes to the output directory:
  stories.jsonl               {"text": "Once upon a time, ..."} per line, one story per document
  probes/recall_seen.jsonl    {"prompt", "answer"}: stories of the corpus cut before a word that an
                              earlier sentence of the same story determines (the colour of the found thing)
  probes/recall_new.jsonl     the same question on stories that are not in the corpus (in-context recall)
  probes/facts.jsonl          world facts the corpus always states the same way (the sound and the food of
                              each animal), asked about characters with names the corpus never uses

A story: a character (name, kind of animal, adjective) lives somewhere, says its animal's sound, finds a
thing of some colour somewhere, shows it to a friend (another animal, which says its own sound), they
play, and the character eats its animal's food. Each story ends with a sentence that repeats the colour:
"<Name> loved the <colour> <thing>." Sentences have several phrasings. Same seed, same bytes.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.cli import output_directory  # noqa: E402

ANIMALS = {  # kind: (sound, food) -- the world facts, always the same in every story
    "cat": ("meow", "fish"), "dog": ("woof", "bones"), "cow": ("moo", "grass"), "duck": ("quack", "bread"),
    "sheep": ("baa", "hay"), "pig": ("oink", "apples"), "owl": ("hoot", "mice"), "horse": ("neigh", "oats"),
    "lion": ("roar", "meat"), "frog": ("croak", "flies"), "mouse": ("squeak", "cheese"), "bee": ("buzz", "honey"),
}
NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jack", "Kira", "Leo", "Mia", "Noah",
         "Omar", "Pia", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Yara", "Zoe", "Bella", "Max", "Lily", "Tom"]
NEW_NAMES = ["Quill", "Brio", "Sula", "Tobin", "Wren", "Zeno", "Nell", "Orla", "Pax", "Juno"]  # for fact probes
ADJECTIVES = ["little", "brave", "kind", "curious", "happy", "sleepy", "clever", "shy", "funny", "gentle"]
PLACES = ["a small house", "the big forest", "a quiet village", "a green farm", "a sunny meadow", "an old barn",
          "a busy town", "a tall tree"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "pink", "white", "black", "brown"]
THINGS = ["ball", "hat", "box", "kite", "shell", "stone", "feather", "cup", "key", "book", "drum", "boat"]
SPOTS = ["the river", "the old tree", "the garden", "the hill", "the pond", "the road", "the fence", "the bridge"]

OPENINGS = ["Once upon a time, there was a {adj} {kind} named {name}.", "There once was a {adj} {kind} called {name}.",
            "{name} was a {adj} {kind}."]
HOMES = ["{name} lived in {place}.", "{name} had a home in {place}."]
SOUNDS = ["Every morning, {name} said \"{sound}!\"", "Each day, {name} would say \"{sound}!\""]
FINDS = ["One day, {name} found a {colour} {thing} near {spot}.", "One morning, {name} saw a {colour} {thing} by {spot}."]
FRIENDS = ["{name} showed it to {friend}, a {friend_kind}. {friend} said \"{friend_sound}!\"",
           "{name} ran to {friend}, a {friend_kind}. {friend} said \"{friend_sound}!\""]
PLAYS = ["They played with the {thing} until the sun went down.", "They played all afternoon."]
MEALS = ["That night, {name} ate some {food}.", "For dinner, {name} had some {food}."]
RECALL = "{name} loved the {colour} {thing}."


def story(rng: random.Random, names: list[str] = NAMES) -> tuple[str, dict[str, str]]:
    """(text, the facts the probes ask about)."""
    name, friend = rng.sample(names, 2)
    kind, friend_kind = rng.sample(list(ANIMALS), 2)
    f = dict(name=name, kind=kind, adj=rng.choice(ADJECTIVES), place=rng.choice(PLACES), sound=ANIMALS[kind][0],
             food=ANIMALS[kind][1], colour=rng.choice(COLOURS), thing=rng.choice(THINGS), spot=rng.choice(SPOTS),
             friend=friend, friend_kind=friend_kind, friend_sound=ANIMALS[friend_kind][0])
    parts = [OPENINGS, HOMES, SOUNDS, FINDS, FRIENDS, PLAYS, MEALS]
    sentences = [rng.choice(options).format(**f) for options in parts] + [RECALL.format(**f)]
    return " ".join(sentences), f


def recall_probe(text: str, facts: dict[str, str]) -> dict[str, str]:
    """The story cut just before the colour in its last sentence."""
    cut = text.rindex(RECALL.format(**facts)) + len(f"{facts['name']} loved the")
    return {"prompt": text[:cut], "answer": facts["colour"]}


def fact_probes(rng: random.Random) -> list[dict[str, str]]:
    probes = []
    for kind, (sound, food) in ANIMALS.items():
        name = rng.choice(NEW_NAMES)
        opening = (f"Once upon a time, there was a {rng.choice(ADJECTIVES)} {kind} named {name}. "
                   f"{name} lived in {rng.choice(PLACES)}.")
        probes.append({"prompt": f"{opening} Every morning, {name} said \"", "answer": f"{sound}!\""})
        probes.append({"prompt": f"{opening} That night, {name} ate some", "answer": food})
    return probes


def generate(num_stories: int, seed: int, num_probes: int = 100) -> dict[str, list[dict[str, str]]]:
    rng = random.Random(seed)
    stories = [story(rng) for _ in range(num_stories)]
    seen = {text for text, _ in stories}
    new_rng, new = random.Random(f"new:{seed}"), []
    while len(new) < num_probes:
        text, facts = story(new_rng)
        if text not in seen:
            new.append(recall_probe(text, facts))
    return {"stories": [{"text": text} for text, _ in stories],
            "probes/recall_seen": [recall_probe(text, facts) for text, facts in stories[:num_probes]],
            "probes/recall_new": new,
            "probes/facts": fact_probes(random.Random(f"facts:{seed}"))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", type=output_directory, default="data/synthetic-text-raw")
    ap.add_argument("--num-stories", type=int, default=3000)
    ap.add_argument("--num-probes", type=int, default=100, help="prompts per recall probe file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.num_stories < 1 or not 0 < args.num_probes <= args.num_stories:
        ap.error("need --num-stories >= 1 and 0 < --num-probes <= --num-stories")
    out = Path(args.output_dir)
    (out / "probes").mkdir(parents=True, exist_ok=True)
    for name, rows in generate(args.num_stories, args.seed, args.num_probes).items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {out}: {args.num_stories} stories, probes: recall_seen, recall_new ({args.num_probes} each), facts")


if __name__ == "__main__":
    main()
