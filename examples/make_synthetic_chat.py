"""Generate short synthetic conversations in ShareGPT JSON format, for training and evaluating small chat
models on a CPU in minutes.

Example:
  python examples/make_synthetic_chat.py --output-dir examples/synthetic --num-conversations 4000 --seed 0

Writes to the output directory:
  train.json                 [{"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}, ...]}, ...]
  valid.json                 the same distribution (--valid-fraction of --num-conversations, default 5%)
  heldout_arithmetic.jsonl   {"prompt": "What is 347 + 128?", "answer": "475"} per line, only held-out pairs

The mix of kinds (exact counts, then shuffled):
  greeting    20%  hello / how are you / who are you / thanks / bye, one fixed answer per intent
  arithmetic  25%  a + b and a - b (a, b of 2 or 3 digits, a >= b for -), a * b (2-digit by 1-digit);
                   one or two questions, always answered "347 + 128 = 475."
  facts       20%  capitals, colours of things, animal sounds, the day before/after, opposites;
                   one or two questions, sometimes after a greeting
  recall      25%  the user states a name / favourite colour / favourite food / city / age / number of
                   pets, and asks for it 1 or 2 turns later (after a filler exchange or a second statement)
  system      10%  a system prompt, then a greeting, fact or arithmetic exchange, or the system prompt
                   names the assistant and the user asks for its name

Held-out arithmetic: a problem (a, op, b) is held out when a keyed BLAKE2b hash of (op, a, b) under the
seed falls in the lowest 5 of 100 buckets (a and b sorted first for + and *, so "128 + 347" is held out
with "347 + 128"). Train and valid never contain a held-out problem in any phrasing, not even as a filler
inside a recall conversation; heldout_arithmetic.jsonl holds distinct held-out problems only.

Every conversation is at most 300 characters (the sum of its turns). Same seed, same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.cli import output_directory  # noqa: E402

Turn = dict[str, str]
Conversation = dict[str, list[Turn]]
Exchange = tuple[str, str]  # (user question, assistant answer)

KIND_WEIGHTS = {"greeting": 0.20, "arithmetic": 0.25, "facts": 0.20, "recall": 0.25, "system": 0.10}
MAX_CHARS = 300
HELDOUT_PERCENT = 5


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# ----------------------------------------------------------------------------- greetings
# One answer per intent keeps the small talk learnable; the user side varies.

GREETINGS: dict[str, tuple[list[str], str]] = {
    "hello": (["Hi!", "Hello!", "Hey!", "Hi there.", "Hello there!", "Good morning!", "Hey there."],
              "Hello! How can I help you today?"),
    "how": (["How are you?", "How are you doing?", "How is it going?", "How are you today?"],
            "I am doing well, thank you!"),
    "who": (["Who are you?", "What are you?"], "I am a small chat assistant."),
    "thanks": (["Thanks!", "Thank you!", "Thanks a lot.", "Thank you very much."], "You are welcome!"),
    "bye": (["Bye!", "Goodbye!", "See you later.", "Bye for now."], "Goodbye! Have a nice day."),
}


def greeting_exchange(intent: str, rng: random.Random) -> Exchange:
    questions, answer = GREETINGS[intent]
    return rng.choice(questions), answer


def greeting_exchanges(rng: random.Random) -> list[Exchange]:
    """A short, plausible run of small talk: open, maybe chat, maybe close."""
    intents = [rng.choice(["hello", "hello", "hello", "how"])]
    if intents[0] == "hello" and rng.random() < 0.5:
        intents.append("how")
    if rng.random() < 0.2:
        intents.append("who")
    if rng.random() < 0.5:
        intents.append(rng.choice(["thanks", "bye"]))
    return [greeting_exchange(i, rng) for i in intents]


# ----------------------------------------------------------------------------- arithmetic

OPS: dict[str, tuple[str, Callable[[int, int], int]]] = {
    "+": ("plus", lambda a, b: a + b),
    "-": ("minus", lambda a, b: a - b),
    "*": ("times", lambda a, b: a * b),
}
OP_WEIGHTS = {"+": 0.4, "-": 0.4, "*": 0.2}
ARITHMETIC_QUESTIONS = [  # {s}: the symbol, {w}: the word
    "What is {a} {s} {b}?",
    "What's {a} {w} {b}?",
    "How much is {a} {w} {b}?",
    "Calculate {a} {s} {b}.",
    "Compute {a} {s} {b}.",
    "{a} {s} {b} = ?",
]


def is_heldout(a: int, op: str, b: int, seed: int) -> bool:
    """The held-out rule: a keyed hash, so the set needs no enumeration and is the same for any
    number of conversations. Commutative problems are held out in both orders."""
    x, y = (min(a, b), max(a, b)) if op in "+*" else (a, b)
    digest = hashlib.blake2b(f"{op}:{x}:{y}".encode(), digest_size=8, key=f"synthetic-chat:{seed}".encode())
    return int.from_bytes(digest.digest(), "big") % 100 < HELDOUT_PERCENT


def _operands(op: str, rng: random.Random) -> tuple[int, int]:
    if op == "*":
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        return (b, a) if rng.random() < 0.5 else (a, b)
    a, b = (rng.randint(10, 99) if rng.random() < 1 / 3 else rng.randint(100, 999) for _ in range(2))
    return (b, a) if op == "-" and a < b else (a, b)  # no negative results


def sample_problem(rng: random.Random, seed: int, heldout: bool = False) -> tuple[int, str, int]:
    """A problem on the chosen side of the held-out rule (rejection: 5% or 95% of draws are accepted)."""
    op = rng.choices(list(OP_WEIGHTS), weights=list(OP_WEIGHTS.values()))[0]
    while True:
        a, b = _operands(op, rng)
        if is_heldout(a, op, b, seed) == heldout:
            return a, op, b


def arithmetic_question(a: int, op: str, b: int, rng: random.Random) -> str:
    return rng.choice(ARITHMETIC_QUESTIONS).format(a=a, s=op, w=OPS[op][0], b=b)


def arithmetic_answer(a: int, op: str, b: int) -> str:
    return f"{a} {op} {b} = {OPS[op][1](a, b)}."


def arithmetic_exchange(rng: random.Random, seed: int) -> Exchange:
    a, op, b = sample_problem(rng, seed)
    return arithmetic_question(a, op, b, rng), arithmetic_answer(a, op, b)


# ----------------------------------------------------------------------------- facts

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "India": "New Delhi", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Russia": "Moscow", "Greece": "Athens",
    "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Ireland": "Dublin", "Portugal": "Lisbon",
    "Australia": "Canberra", "Cuba": "Havana",
}
COLOURS_OF_THINGS = {
    "the sky": "blue", "grass": "green", "snow": "white", "coal": "black", "a banana": "yellow",
    "a tomato": "red", "a carrot": "orange", "a lemon": "yellow", "milk": "white", "chocolate": "brown",
    "a strawberry": "red", "a frog": "green", "a pumpkin": "orange", "a crow": "black", "a flamingo": "pink",
}
ANIMAL_SOUNDS = {
    "a dog": "woof", "a cat": "meow", "a cow": "moo", "a duck": "quack", "a sheep": "baa", "a pig": "oink",
    "an owl": "hoot", "a horse": "neigh", "a lion": "roar", "a frog": "croak", "a bee": "buzz",
    "a mouse": "squeak", "a snake": "hiss",
}
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_OPPOSITE_PAIRS = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"), ("open", "closed"),
    ("light", "dark"), ("day", "night"), ("wet", "dry"), ("left", "right"), ("full", "empty"), ("hard", "soft"),
    ("loud", "quiet"), ("early", "late"), ("high", "low"), ("thick", "thin"), ("old", "young"), ("in", "out"),
]
OPPOSITES = {**dict(_OPPOSITE_PAIRS), **{b: a for a, b in _OPPOSITE_PAIRS}}


def _capital(rng: random.Random) -> Exchange:
    country = rng.choice(list(CAPITALS))
    q = rng.choice(["What is the capital of {x}?", "What's the capital of {x}?", "Which city is the capital of {x}?",
                    "Name the capital of {x}."])
    return q.format(x=country), f"The capital of {country} is {CAPITALS[country]}."


def _colour(rng: random.Random) -> Exchange:
    thing = rng.choice(list(COLOURS_OF_THINGS))
    q = rng.choice(["What colour is {x}?", "What color is {x}?", "Which colour is {x}?", "What is the colour of {x}?"])
    return q.format(x=thing), f"{_cap(thing)} is {COLOURS_OF_THINGS[thing]}."


def _sound(rng: random.Random) -> Exchange:
    animal = rng.choice(list(ANIMAL_SOUNDS))
    q = rng.choice(["What sound does {x} make?", "What does {x} say?", "What noise does {x} make?"])
    return q.format(x=animal), f"{_cap(animal)} says {ANIMAL_SOUNDS[animal]}."


def _day(rng: random.Random) -> Exchange:
    i = rng.randrange(7)
    if rng.random() < 0.5:
        q = rng.choice(["What day comes after {x}?", "Which day is after {x}?", "What is the day after {x}?"])
        return q.format(x=WEEKDAYS[i]), f"The day after {WEEKDAYS[i]} is {WEEKDAYS[(i + 1) % 7]}."
    q = rng.choice(["What day comes before {x}?", "Which day is before {x}?", "What is the day before {x}?"])
    return q.format(x=WEEKDAYS[i]), f"The day before {WEEKDAYS[i]} is {WEEKDAYS[(i - 1) % 7]}."


def _opposite(rng: random.Random) -> Exchange:
    word = rng.choice(list(OPPOSITES))
    q = rng.choice(["What is the opposite of {x}?", "What's the opposite of {x}?", "Give me the opposite of {x}."])
    return q.format(x=word), f"The opposite of {word} is {OPPOSITES[word]}."


FACT_TOPICS: list[Callable[[random.Random], Exchange]] = [_capital, _colour, _sound, _day, _opposite]


def fact_exchange(rng: random.Random) -> Exchange:
    return rng.choice(FACT_TOPICS)(rng)


# ----------------------------------------------------------------------------- recall
# The acknowledgement may echo the value, but the answer always has to come from the earlier turns.

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jack", "Kira", "Leo", "Mia", "Noah",
         "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Yara", "Zoe"]
PETS = ["cats", "dogs", "fish", "birds", "rabbits", "hamsters", "turtles"]
ASSISTANT_NAMES = ["Pip", "Max", "Nova", "Bolt", "Echo", "Sky", "Juno", "Rex", "Iris", "Milo", "Luna", "Otto"]
RECALL_VALUES = {
    "name": NAMES,
    "colour": ["teal", "red", "blue", "green", "purple", "orange", "yellow", "pink", "black", "white", "gold",
               "silver", "brown", "grey", "violet", "navy"],
    "food": ["pasta", "pizza", "rice", "soup", "sushi", "tacos", "curry", "bread", "cheese", "noodles", "salad",
             "apples", "dumplings", "pancakes"],
    "city": ["Boston", "Osaka", "Munich", "Lyon", "Milan", "Porto", "Sydney", "Denver", "Seattle", "Toronto",
             "Chicago", "Austin", "Bristol", "Leeds", "Naples", "Hamburg", "Kyoto", "Dallas", "Perth", "Geneva"],
    "age": [str(n) for n in range(6, 91)],
    "pets": [str(n) for n in range(2, 10)],  # {p}: the kind of pet
}
RECALL_TEMPLATES = {  # slot: (statements, acknowledgements, questions, the answer)
    "name": (["My name is {v}.", "I'm {v}.", "Call me {v}."], ["Nice to meet you, {v}!", "Hello, {v}!"],
             ["What is my name?", "What's my name?", "Do you remember my name?"], "Your name is {v}."),
    "colour": (["My favourite colour is {v}.", "I love the colour {v}."], ["Nice choice!", "Got it."],
               ["What is my favourite colour?", "Which colour do I love?"], "Your favourite colour is {v}."),
    "food": (["My favourite food is {v}.", "I love eating {v}."], ["Yum!", "Got it."],
             ["What is my favourite food?", "What food do I love?"], "Your favourite food is {v}."),
    "city": (["I live in {v}.", "My home is in {v}."], ["{v} sounds nice!", "Got it."],
             ["Where do I live?", "Which city do I live in?"], "You live in {v}."),
    "age": (["I am {v} years old.", "I'm {v} years old."], ["Got it.", "Thanks for telling me."],
            ["How old am I?", "What is my age?"], "You are {v} years old."),
    "pets": (["I have {v} {p}.", "I own {v} {p}."], ["How lovely!", "Got it."],
             ["How many {p} do I have?"], "You have {v} {p}."),
}


def recall_slot(slot: str, rng: random.Random) -> tuple[Exchange, Exchange]:
    """(statement, acknowledgement), (question, answer) for one remembered fact about the user."""
    statements, acks, questions, answer = RECALL_TEMPLATES[slot]
    v, p = rng.choice(RECALL_VALUES[slot]), rng.choice(PETS)
    stated = (rng.choice(statements).format(v=v, p=p), rng.choice(acks).format(v=v, p=p))
    return stated, (rng.choice(questions).format(v=v, p=p), answer.format(v=v, p=p))


def filler_exchange(rng: random.Random, seed: int, small_talk: bool = True) -> Exchange:
    """One self-contained exchange: "how are you", a fact or an arithmetic problem."""
    topic = rng.randrange(3) if small_talk else 1 + rng.randrange(2)
    if topic == 0:
        return greeting_exchange("how", rng)
    return fact_exchange(rng) if topic == 1 else arithmetic_exchange(rng, seed)


def recall_exchanges(rng: random.Random, seed: int) -> list[Exchange]:
    """State, then ask 1 or 2 turns later: directly, after a filler exchange, or after a second statement
    (then either one is asked, so the answer must pick the right turn)."""
    first, second = rng.sample(list(RECALL_TEMPLATES), 2)
    stated, asked = recall_slot(first, rng)
    r = rng.random()
    if r < 0.35:
        return [stated, asked]
    if r < 0.7:
        return [stated, filler_exchange(rng, seed), asked]
    stated2, asked2 = recall_slot(second, rng)
    return [stated, stated2, rng.choice([asked, asked2])]


# ----------------------------------------------------------------------------- conversations

SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a friendly assistant.",
                  "You are a helpful assistant. Keep answers short."]
NAMED_SYSTEM_PROMPTS = ["You are {v}, a helpful assistant.", "Your name is {v}. You are a helpful assistant."]


def _facts_exchanges(rng: random.Random) -> list[Exchange]:
    opening = [greeting_exchange("hello", rng)] if rng.random() < 0.15 else []
    return opening + [fact_exchange(rng) for _ in range(1 if rng.random() < 0.7 else 2)]


def _arithmetic_exchanges(rng: random.Random, seed: int) -> list[Exchange]:
    return [arithmetic_exchange(rng, seed) for _ in range(1 if rng.random() < 0.75 else 2)]


def _to_sharegpt(exchanges: list[Exchange], system: str | None = None) -> Conversation:
    turns = [{"from": "system", "value": system}] if system else []
    for question, answer in exchanges:
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"conversations": turns}


def make_conversation(kind: str, rng: random.Random, seed: int) -> Conversation:
    """One conversation of a kind; `seed` only selects the held-out arithmetic problems to avoid."""
    if kind == "greeting":
        return _to_sharegpt(greeting_exchanges(rng))
    if kind == "arithmetic":
        return _to_sharegpt(_arithmetic_exchanges(rng, seed))
    if kind == "facts":
        return _to_sharegpt(_facts_exchanges(rng))
    if kind == "recall":
        return _to_sharegpt(recall_exchanges(rng, seed))
    if kind == "system":
        if rng.random() < 0.4:  # the answer depends on the system turn
            name = rng.choice(ASSISTANT_NAMES)
            opening = [greeting_exchange("hello", rng)] if rng.random() < 0.3 else []
            ask = (rng.choice(["What is your name?", "What's your name?"]), f"My name is {name}.")
            return _to_sharegpt(opening + [ask], rng.choice(NAMED_SYSTEM_PROMPTS).format(v=name))
        body = greeting_exchanges(rng) if rng.random() < 1 / 3 else [filler_exchange(rng, seed, small_talk=False)]
        return _to_sharegpt(body, rng.choice(SYSTEM_PROMPTS))
    raise ValueError(f"unknown kind {kind!r}")


def num_chars(conversation: Conversation) -> int:
    return sum(len(t["value"]) for t in conversation["conversations"])


def kind_counts(n: int) -> dict[str, int]:
    """Exact counts per kind (largest remainders), so small sets keep the mix too."""
    raw = {k: n * w for k, w in KIND_WEIGHTS.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def heldout_problems(num: int, seed: int) -> list[dict]:
    """`num` distinct held-out problems as {"prompt", "answer"}. Multiplication has only ~36 held-out
    problems (5% of 720), so it gets 10% of the set and + / - share the rest."""
    rng = random.Random(f"heldout:{seed}")
    mul = [(a, "*", b) for a in range(10, 100) for b in range(2, 10) if is_heldout(a, "*", b, seed)]
    problems = rng.sample(mul, min(len(mul), num // 10))
    seen = {(min(a, b), op, max(a, b)) for a, op, b in problems}
    ops = ["+", "-"]
    while len(problems) < num:
        op = ops[len(problems) % 2]
        while True:
            a, b = _operands(op, rng)
            key = (min(a, b), op, max(a, b)) if op == "+" else (a, op, b)
            if key not in seen and is_heldout(a, op, b, seed):
                break
        seen.add(key)
        problems.append((a, op, b))
    rng.shuffle(problems)
    return [{"prompt": arithmetic_question(a, op, b, rng), "answer": str(OPS[op][1](a, b))} for a, op, b in problems]


def generate(num_conversations: int, seed: int, valid_fraction: float = 0.05,
             num_heldout: int = 200) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, valid, heldout): `num_conversations` conversations split into train and valid, and
    `num_heldout` held-out arithmetic problems."""
    rng = random.Random(seed)
    kinds = [k for k, c in kind_counts(num_conversations).items() for _ in range(c)]
    rng.shuffle(kinds)
    conversations = []
    for kind in kinds:
        while True:  # a redraw keeps the length bound a guarantee, not a hope
            conversation = make_conversation(kind, rng, seed)
            if num_chars(conversation) <= MAX_CHARS:
                break
        conversations.append(conversation)
    num_valid = round(num_conversations * valid_fraction)
    train, valid = conversations[: num_conversations - num_valid], conversations[num_conversations - num_valid:]
    return train, valid, heldout_problems(num_heldout, seed)


def _dump_json_list(items: list[dict], path: Path) -> None:
    """A JSON array with one conversation per line: valid JSON, yet readable and diffable."""
    path.write_text("[\n" + ",\n".join(json.dumps(x) for x in items) + "\n]\n")


def write(output_dir: str | Path, train: list[dict], valid: list[dict], heldout: list[dict]) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _dump_json_list(train, out / "train.json")
    if valid:
        _dump_json_list(valid, out / "valid.json")
    (out / "heldout_arithmetic.jsonl").write_text("".join(json.dumps(x) + "\n" for x in heldout))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=output_directory, default="examples/synthetic")
    p.add_argument("--num-conversations", type=int, default=4000, help="train + valid conversations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--valid-fraction", type=float, default=0.05, help="0 writes no valid.json")
    p.add_argument("--num-heldout", type=int, default=200, help="held-out arithmetic problems")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.num_conversations < 1 or not 0 <= args.valid_fraction < 1 or args.num_heldout < 0:
        p.error("need --num-conversations >= 1, 0 <= --valid-fraction < 1 and --num-heldout >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    start = time.perf_counter()
    train, valid, heldout = generate(args.num_conversations, args.seed, args.valid_fraction, args.num_heldout)
    write(args.output_dir, train, valid, heldout)
    if not args.quiet:
        lengths = [num_chars(c) for c in train + valid]
        print(f"wrote {args.output_dir}: train {len(train)}, valid {len(valid)}, heldout {len(heldout)}; "
              f"characters per conversation mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}; "
              f"in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
