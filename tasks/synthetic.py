"""The synthetic task suite for language models: nine families of short problems (as in Chat Hamner's
curriculum), each at difficulty levels 1-5, with a held-out rule and the text and chat forms.

    problem = FAMILIES["sorting"](random.Random(0), level=3)   # Problem(question, answer, keys)

What a level changes: number sizes (arithmetic, comparison, sorting), list lengths (counting, sorting, copy),
nesting depth (brackets, list operations), the length of the chain (logic) and the distance of the recalled
fact (context recall: how many facts are stated after it).

Held-out values: a problem's `keys` name the values it is made of (the operands of a sum, the multiset of a
list to sort, a name-value binding of context recall, ...); a key is held out when a keyed hash of it under
the seed falls in the lowest HELDOUT_PERCENT of 100 buckets. Training problems contain no held-out key at all;
held-out problems have a held-out first key (the one asked about). Same seed, same problems.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable

LEVELS = (1, 2, 3, 4, 5)
HELDOUT_PERCENT = 5
WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "candle", "garden", "pencil", "rocket", "violin",
         "window", "turtle", "basket", "mirror", "forest", "ladder", "marble", "needle", "island", "bread", "chair",
         "tower", "bottle", "castle", "dragon", "feather", "guitar", "hammer", "jacket", "kettle", "lantern", "meadow",
         "orange", "pillow", "rabbit", "saddle", "tunnel", "wallet", "anchor", "bucket", "comet", "desert", "engine",
         "falcon", "glove", "harbor", "igloo", "jungle", "koala"]
NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jack", "Kira", "Leo", "Mia", "Noah",
         "Omar", "Pia", "Rosa", "Sam", "Tara", "Uma"]
ATTRIBUTES = {  # context recall: "<name>'s <attribute> is <value>."
    "colour": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "white", "black", "brown"],
    "pet": ["cat", "dog", "fish", "bird", "rabbit", "hamster", "turtle", "horse"],
    "city": ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Dublin", "Madrid", "Vienna", "Quito"],
    "number": [str(n) for n in range(10, 100)],
}
CATEGORIES = ["wugs", "daxes", "feps", "blicks", "zorps", "mibs", "toves", "glims", "snarks", "quolls", "brogs",
              "plinks"]
BRACKETS = ["()", "[]", "{}"]
LISTOPS = {"MAX": max, "MIN": min, "SUM": sum}


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    keys: tuple[str, ...]  # the values it is made of; keys[0] is the one asked about


def is_heldout(family: str, key: str, seed: int) -> bool:
    digest = hashlib.blake2b(f"{family}:{key}".encode(), digest_size=8, key=f"synthetic-tasks:{seed}".encode())
    return int.from_bytes(digest.digest(), "big") % 100 < HELDOUT_PERCENT


# ----------------------------------------------------------------------------- the families

def arithmetic(rng: random.Random, level: int) -> Problem:
    """1: one digit, + -; 2: two digits, + -; 3: two digits, + - and x by one digit; 4: three digits + -, two by
    two digits x; 5: three operands of up to three digits."""
    hi = {1: 9, 2: 99, 3: 99, 4: 999, 5: 999}[level]
    lo = 0 if level == 1 else 10
    if level == 5:
        a, b, c = (rng.randint(lo, hi) for _ in range(3))
        op1, op2 = rng.choice("+-"), rng.choice("+-")
        text = f"{a} {op1} {b} {op2} {c}"
        value = a + (b if op1 == "+" else -b) + (c if op2 == "+" else -c)
        return Problem(f"What is {text}?", str(value), (text,))
    op = rng.choice("+-*" if level >= 3 else "+-")
    if op == "*":
        a, b = (rng.randint(10, 99), rng.randint(2, 9)) if level == 3 else (rng.randint(10, 99), rng.randint(10, 99))
    else:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "-" and a < b:
            a, b = b, a
    key = f"{min(a, b)} {op} {max(a, b)}" if op in "+*" else f"{a} - {b}"  # held out in both orders
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return Problem(f"What is {a} {op} {b}?", str(value), (key,))


def counting(rng: random.Random, level: int) -> Problem:
    """1-2: how many words in a list of up to 4 / 7; 3-5: how often a word occurs in a list of up to 8 / 11 / 14."""
    if level <= 2:
        words = rng.choices(WORDS, k=rng.randint(1, 3 * level + 1))
        return Problem(f"How many words are in this list: {', '.join(words)}?", str(len(words)),
                       (" ".join(words),))
    n = rng.randint(3, 3 * level - 1)
    target = rng.choice(WORDS[:6])
    words = rng.choices(WORDS[:6], k=n)  # few distinct words: the target occurs often
    return Problem(f"How many times does {target} occur in: {', '.join(words)}?", str(words.count(target)),
                   (f"{target}: {' '.join(words)}",))


def sorting(rng: random.Random, level: int) -> Problem:
    """Level + 2 numbers, below 10 (levels 1-2) or 100; levels 4-5 also sort in descending order."""
    nums = [rng.randint(0, 9 if level <= 2 else 99) for _ in range(level + 2)]
    descending = level >= 4 and rng.random() < 0.5
    order = "descending" if descending else "ascending"
    answer = " ".join(map(str, sorted(nums, reverse=descending)))
    return Problem(f"Sort in {order} order: {' '.join(map(str, nums))}", answer,
                   (f"{order} {' '.join(map(str, sorted(nums)))}",))  # the multiset: no reordering of it is trained


def _balanced(rng: random.Random, depth: int, kinds: int, groups: int) -> str:
    """`groups` groups side by side, the first nested exactly `depth` deep, the others at most that deep."""
    def group(d: int) -> str:
        if d == 0:
            return ""
        o, c = rng.choice(BRACKETS[:kinds])
        return o + group(d - 1) + c
    return "".join(group(depth if g == 0 else rng.randint(1, depth)) for g in range(groups))


def is_balanced(text: str) -> bool:
    closing = {c: o for o, c in BRACKETS}
    stack = []
    for ch in text:
        if ch in closing:
            if not stack or stack.pop() != closing[ch]:
                return False
        else:
            stack.append(ch)
    return not stack


def brackets(rng: random.Random, level: int) -> Problem:
    """Is the sequence balanced? Nesting depth = level, bracket kinds min(level + 1, 3), 1-3 groups; half of them
    have one bracket changed (which always unbalances it)."""
    text = list(_balanced(rng, level, min(level + 1, 3), rng.randint(1, 3)))
    if rng.random() < 0.5:
        i = rng.randrange(len(text))
        text[i] = rng.choice([b for b in "()[]{}" if b != text[i]])
    seq = " ".join(text)
    return Problem(f"Are these brackets balanced: {seq}?", "yes" if is_balanced("".join(text)) else "no", (seq,))


def list_operations(rng: random.Random, level: int) -> Problem:
    """ListOps: [MAX 3 [MIN 7 2] 5]. Levels 1-2: flat lists of 2-3 / 3-5 digits; 3, 4, 5: nested 1, 2, 3 deep."""
    def expr(depth: int) -> tuple[str, int]:
        op = rng.choice(list(LISTOPS))
        n = rng.randint(2, 3) if level == 1 else rng.randint(2, 4) if depth else rng.randint(3, 5)
        nested = rng.randrange(n) if depth else -1  # one argument is nested: the depth is exact
        parts, values = [], []
        for i in range(n):
            text, value = expr(depth - 1) if i == nested else (str(v := rng.randint(0, 9)), v)
            parts.append(text)
            values.append(value)
        return f"[{op} {' '.join(parts)}]", LISTOPS[op](values)
    text, value = expr(max(0, level - 2))
    return Problem(f"Evaluate {text}", str(value), (text,))


def copy_repeat(rng: random.Random, level: int) -> Problem:
    """Repeat a phrase of ceil(level / 2) words 2 to level + 2 times."""
    phrase = " ".join(rng.choices(WORDS, k=(level + 1) // 2))
    n = rng.randint(2, level + 2)
    return Problem(f"Repeat {n} times: {phrase}", ", ".join([phrase] * n), (f"{n}x {phrase}",))


def context_recall(rng: random.Random, level: int) -> Problem:
    """level + 1 facts about different people; the question asks about the first, so `level` facts stand between
    it and the question. Keys: every name-value binding stated (the asked one first)."""
    names = rng.sample(NAMES, level + 1)
    facts, keys = [], []
    for name in names:
        attribute = rng.choice(list(ATTRIBUTES))
        value = rng.choice(ATTRIBUTES[attribute])
        facts.append((name, attribute, value))
        keys.append(f"{name} {attribute} {value}")
    name, attribute, value = facts[0]
    story = " ".join(f"{n}'s {a} is {v}." for n, a, v in facts)
    return Problem(f"{story} What is {name}'s {attribute}?", value, tuple(keys))


def logic(rng: random.Random, level: int) -> Problem:
    """A chain of `level` rules "All A are B." (shuffled from level 3 on, with a distracting rule from level 4);
    the question follows the whole chain (yes) or asks it backwards (no): the same two categories either way."""
    cats = rng.sample(CATEGORIES, level + 2)
    chain, off = cats[:level + 1], cats[level + 1]
    rules = [f"All {a} are {b}." for a, b in zip(chain, chain[1:])]
    if level >= 4:
        rules.append(f"All {off} are {chain[rng.randrange(1, level + 1)]}.")  # points into the chain, not out
    if level >= 3:
        rng.shuffle(rules)
    yes = rng.random() < 0.5
    first, last = (chain[0], chain[-1]) if yes else (chain[-1], chain[0])
    question = f"{' '.join(rules)} Are all {first} {last}?"
    return Problem(question, "yes" if yes else "no", (question,))


def comparison(rng: random.Random, level: int) -> Problem:
    """Which is larger: two numbers of 1, 2, 3 digits (levels 1-3); three (4) or four (5) numbers of 4 digits that
    share their leading digits."""
    count = {4: 3, 5: 4}.get(level, 2)
    if level <= 3:
        nums = rng.sample(range(10 ** (level - 1) if level > 1 else 0, 10 ** level), count)
    else:
        head = rng.randint(10, 99) * 100
        nums = [head + x for x in rng.sample(range(100), count)]
    listed = ", ".join(map(str, nums[:-1])) + f" or {nums[-1]}"
    word = "larger" if count == 2 else "largest"
    return Problem(f"Which is {word}: {listed}?", str(max(nums)), (" ".join(map(str, sorted(nums))),))


FAMILIES: dict[str, Callable[[random.Random, int], Problem]] = {
    "arithmetic": arithmetic, "counting": counting, "sorting": sorting, "brackets": brackets,
    "list_operations": list_operations, "copy_repeat": copy_repeat, "context_recall": context_recall,
    "logic": logic, "comparison": comparison,
}


# ----------------------------------------------------------------------------- sampling and forms

def sample(family: str, level: int, rng: random.Random, seed: int, heldout: bool = False,
           max_tries: int = 10_000) -> Problem | None:
    """A problem on the chosen side of the held-out rule (training: no key held out; held-out: the asked key
    held out), or None when `max_tries` draws find none (a small level has few held-out values)."""
    if family not in FAMILIES or level not in LEVELS:
        raise ValueError(f"unknown family {family!r} or level {level}; families {list(FAMILIES)}, levels {LEVELS}")
    for _ in range(max_tries):
        problem = FAMILIES[family](rng, level)
        if heldout and is_heldout(family, problem.keys[0], seed):
            return problem
        if not heldout and not any(is_heldout(family, k, seed) for k in problem.keys):
            return problem
    return None


def heldout_problems(family: str, level: int, num: int, seed: int) -> list[Problem]:
    """Up to `num` distinct held-out problems (fewer when the level has fewer within the search budget)."""
    rng = random.Random(f"heldout:{family}:{level}:{seed}")
    found: dict[str, Problem] = {}
    for _ in range(num * 20):
        problem = sample(family, level, rng, seed, heldout=True, max_tries=2_000)
        if problem is None:
            break
        found.setdefault(problem.question, problem)
        if len(found) == num:
            break
    return list(found.values())


TEXT_CUE = " Answer:"


def text_form(problem: Problem) -> str:
    """A text document: the question, then ' Answer: <answer>'."""
    return f"{problem.question}{TEXT_CUE} {problem.answer}"


def text_probe(problem: Problem) -> dict[str, str]:
    return {"prompt": problem.question + TEXT_CUE, "answer": problem.answer}


def chat_form(problem: Problem) -> dict[str, list[dict[str, str]]]:
    """A ShareGPT conversation: the question as the user's turn, the bare answer as the assistant's."""
    return {"conversations": [{"from": "human", "value": problem.question}, {"from": "gpt", "value": problem.answer}]}


def chat_probe(problem: Problem) -> dict[str, str]:
    return {"prompt": problem.question, "answer": problem.answer}
