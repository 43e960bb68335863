"""The synthetic task suite (tasks/synthetic.py, examples/make_synthetic_tasks.py) and its leveled mixture source:
right answers (checked by parsing the questions back with this file's own rules), difficulty that grows with the
level, held-out values absent from training, same seed same files, and a stage's difficulty choosing the levels
(CPU, a few seconds)."""
import filecmp
import json
import random
import re
import subprocess
import sys
from collections import Counter

import pytest

from conftest import ROOT, compose_chat
from evaluators.probes import load_probes
from tasks.synthetic import FAMILIES, LEVELS, sample

SCRIPT = ROOT / "examples" / "make_synthetic_tasks.py"


# ----------------------------------------------------------------------------- independent checkers

def listops_value(text: str) -> int:
    tokens = text.replace("[", " [ ").replace("]", " ] ").split()

    def parse(i: int) -> tuple[int, int]:  # tokens[i] == "["
        op, values, i = tokens[i + 1], [], i + 2
        while tokens[i] != "]":
            if tokens[i] == "[":
                value, i = parse(i)
            else:
                value, i = int(tokens[i]), i + 1
            values.append(value)
        return {"MAX": max, "MIN": min, "SUM": sum}[op](values), i + 1
    return parse(0)[0]


def listops_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        deepest = max(deepest, depth)
    return deepest - 1  # nesting below the outer list


def bracket_depth_and_balance(seq: str) -> tuple[int, bool]:
    pairs, stack, deepest = {")": "(", "]": "[", "}": "{"}, [], 0
    for ch in seq.split():
        if ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return deepest, False
        else:
            stack.append(ch)
            deepest = max(deepest, len(stack))
    return deepest, not stack


def check(family: str, q: str, a: str) -> dict:
    """Asserts that `a` answers `q`; returns the facts of the problem the level tests look at."""
    if family == "arithmetic":
        expr = re.fullmatch(r"What is ([\d +*-]+)\?", q).group(1)
        nums = [int(n) for n in re.findall(r"\d+", expr)]
        tokens = expr.split()
        value = int(tokens[0])
        for op, n in zip(tokens[1::2], tokens[2::2]):
            value = value + int(n) if op == "+" else value - int(n) if op == "-" else value * int(n)
        assert int(a) == value
        return {"size": max(nums), "operands": len(nums)}
    if family == "counting":
        m = re.fullmatch(r"How many words are in this list: (.+)\?", q)
        if m:
            words = m.group(1).split(", ")
            assert int(a) == len(words)
        else:
            target, listed = re.fullmatch(r"How many times does (\w+) occur in: (.+)\?", q).groups()
            words = listed.split(", ")
            assert int(a) == words.count(target)
        return {"size": len(words)}
    if family == "sorting":
        order, listed = re.fullmatch(r"Sort in (ascending|descending) order: ([\d ]+)", q).groups()
        nums = [int(n) for n in listed.split()]
        assert [int(n) for n in a.split()] == sorted(nums, reverse=order == "descending")
        return {"size": len(nums), "values": (order, tuple(sorted(nums)))}
    if family == "brackets":
        seq = re.fullmatch(r"Are these brackets balanced: (.+)\?", q).group(1)
        depth, balanced = bracket_depth_and_balance(seq)
        assert a == ("yes" if balanced else "no")
        return {"size": depth if balanced else None}
    if family == "list_operations":
        text = re.fullmatch(r"Evaluate (.+)", q).group(1)
        assert int(a) == listops_value(text)
        return {"size": listops_depth(text)}
    if family == "copy_repeat":
        n, phrase = re.fullmatch(r"Repeat (\d+) times: (.+)", q).groups()
        assert a == ", ".join([phrase] * int(n))
        return {"size": len(phrase.split())}
    if family == "context_recall":
        facts = re.findall(r"(\w+)'s (\w+) is (\w+)\.", q)
        name, attribute = re.search(r"What is (\w+)'s (\w+)\?$", q).groups()
        asked = [i for i, (n, at, _) in enumerate(facts) if (n, at) == (name, attribute)]
        assert len(asked) == 1 and facts[asked[0]][2] == a
        return {"size": len(facts) - 1 - asked[0], "values": (name, attribute, a), "facts": facts}
    if family == "logic":
        rules = re.findall(r"All (\w+) are (\w+)\.", q)
        first, last = re.search(r"Are all (\w+) (\w+)\?$", q).groups()
        reach, frontier = set(), {first}
        while frontier:
            reach |= frontier
            frontier = {b for x, b in rules if x in frontier} - reach
        assert a == ("yes" if last in reach else "no")
        chain, cur = 0, first if a == "yes" else last  # rules followed from the lower end of the question
        while (nxt := [b for x, b in rules if x == cur]):
            cur, chain = nxt[0], chain + 1
        return {"size": chain}
    if family == "comparison":
        nums = [int(n) for n in re.findall(r"\d+", q)]
        assert int(a) == max(nums) and len(set(nums)) == len(nums)
        return {"size": max(nums), "values": tuple(sorted(nums))}
    raise AssertionError(family)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_answer_is_right_and_the_level_sets_the_difficulty(family):
    sizes = {}
    for level in LEVELS:
        rng = random.Random(level)
        facts = [check(family, p.question, p.answer) for p in (sample(family, level, rng, seed=0) for _ in range(200))]
        sizes[level] = max(f["size"] for f in facts if f["size"] is not None)
    expected = {  # what each level is documented to reach
        "arithmetic": lambda s: s[1] <= 9 and s[2] <= 99 and s[4] > 99,
        "counting": lambda s: s[1] <= 4 < s[2] and s[3] < s[4] < s[5],
        "sorting": lambda s: all(s[d] == d + 2 for d in LEVELS),
        "brackets": lambda s: all(s[d] == d for d in LEVELS),
        "list_operations": lambda s: s[1] == s[2] == 0 and (s[3], s[4], s[5]) == (1, 2, 3),
        "copy_repeat": lambda s: all(s[d] == (d + 1) // 2 for d in LEVELS),
        "context_recall": lambda s: all(s[d] == d for d in LEVELS),  # facts between the asked one and the question
        "logic": lambda s: all(s[d] == d for d in LEVELS),
        "comparison": lambda s: s[1] <= 9 < s[2] <= 99 < s[3] <= 999 < s[4],
    }[family]
    assert expected(sizes), sizes


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    for name in ("a", "b"):
        subprocess.run([sys.executable, str(SCRIPT), "--output-dir", str(out / name), "--num-per-level", "450",
                        "--num-probes", "20", "--levels", "1", "2", "3", "--seed", "3"], check=True,
                       capture_output=True, timeout=120)
    return out


def test_same_seed_same_files_and_probes_for_every_family_and_level(suite):
    a, b = suite / "a", suite / "b"
    for form in ("text", "chat"):
        for level in (1, 2, 3):
            assert filecmp.cmp(a / "raw" / f"level{level}" / ("text.jsonl" if form == "text" else "chat.json"),
                               b / "raw" / f"level{level}" / ("text.jsonl" if form == "text" else "chat.json"),
                               shallow=False)
            for family in FAMILIES:
                probe = a / "probes" / form / f"level{level}" / f"{family}_L{level}.jsonl"
                rows = load_probes(str(probe))
                assert filecmp.cmp(probe, b / probe.relative_to(a), shallow=False)
                for row in rows:
                    question = row["prompt"].removesuffix(" Answer:") if form == "text" else row["prompt"]
                    check(family, question, row["answer"])
    assert json.loads((a / "chat" / "dataset.json").read_text())["levels"] == {"1": "level1", "2": "level2",
                                                                               "3": "level3"}


def training_questions(root) -> list[tuple[str, str]]:
    rows = []
    for level in (1, 2, 3):
        for line in (root / "raw" / f"level{level}" / "text.jsonl").read_text().splitlines():
            question, answer = json.loads(line)["text"].rsplit(" Answer: ", 1)
            rows.append((question, answer))
    return rows


def family_of(question: str) -> str:
    starts = {"What is": "arithmetic", "How many": "counting", "Sort": "sorting", "Are these": "brackets",
              "Evaluate": "list_operations", "Repeat": "copy_repeat", "Which is": "comparison"}
    for start, family in starts.items():
        if question.startswith(start):
            return family
    return "logic" if question.startswith("All") else "context_recall"


def test_heldout_values_never_occur_in_training(suite):
    """The values a held-out probe asks about (operand pairs, the multiset to sort, the numbers compared, the
    name-attribute-value binding recalled, the whole question) appear nowhere in the training problems."""
    seen_questions, seen_values, seen_pairs = set(), set(), set()
    for question, answer in training_questions(suite / "a"):
        family = family_of(question)
        facts = check(family, question, answer)
        seen_questions.add(question)
        if "values" in facts:
            seen_values.add((family, facts["values"]))
        for fact in facts.get("facts", []):
            seen_values.add(("context_recall", fact))
        if family == "arithmetic":
            a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", question).groups() if \
                question.count(" ") == 4 else (question, "", "")
            seen_pairs.add((op, *sorted((a, b))) if op in "+*" else (op, a, b))
    probes = 0
    for family in FAMILIES:
        for level in (1, 2, 3):
            for row in load_probes(str(suite / "a" / "probes" / "chat" / f"level{level}" / f"{family}_L{level}.jsonl")):
                probes += 1
                facts = check(family, row["prompt"], row["answer"])
                assert row["prompt"] not in seen_questions
                if "values" in facts:
                    assert (family, facts["values"]) not in seen_values
                if family == "arithmetic" and row["prompt"].count(" ") == 4:
                    a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", row["prompt"]).groups()
                    assert ((op, *sorted((a, b))) if op in "+*" else (op, a, b)) not in seen_pairs
    assert probes > 300


# ----------------------------------------------------------------------------- the leveled mixture source

def open_tasks(suite, *stages: str):
    from dataset.loaders import open_data

    cfg = compose_chat("dataset=tasks", f"dataset.sources.tasks.path={suite / 'a' / 'chat'}", "global_batch_size=8",
                       "dataset.seq_len=256", *stages)
    return open_data(cfg, 0, 1)


def drawn_levels(train, batches: int) -> Counter:
    tasks, levels = train.sources["tasks"], Counter()
    for _ in range(batches):
        train.set_difficulty()
        for _ in range(8):
            levels[tasks._train_row()[0]] += 1
    return levels


def test_a_stage_difficulty_draws_levels_up_to_it_and_resumes_exactly(suite):
    train, test = open_tasks(suite, "dataset.stages=[{name: a, difficulty: 1, steps: 2}, {name: b, difficulty: 2}]")
    assert set(drawn_levels(train, 3)) == {1}
    train.curriculum.after_step(2)  # stage b
    assert set(drawn_levels(train, 20)) == {1, 2}
    levels_in_test = {level for level, _ in test["tasks"]._test_rows()}
    assert levels_in_test == {1, 2, 3}  # validation reads every level

    batches = iter(train)
    next(batches)
    state = train.state_dict()
    expected = [next(batches)[1]["inputs"] for _ in range(3)]
    again, _ = open_tasks(suite, "dataset.stages=[{name: a, difficulty: 1, steps: 2}, {name: b, difficulty: 2}]")
    again.load_state_dict(state)
    batches = iter(again)
    for want in expected:
        assert (next(batches)[1]["inputs"] == want).all()


def test_bad_difficulties_are_refused(suite, tmp_path):
    train, _ = open_tasks(suite, "dataset.stages=[{name: a, difficulty: 4}]")
    with pytest.raises(ValueError, match="difficulty 4, but its levels are"):
        next(iter(train))
    with pytest.raises(ValueError, match="difficulty must be a level"):
        open_tasks(suite, "dataset.stages=[{name: a, difficulty: 0}]")
    from dataset.build_text_dataset import TextBuildConfig, build

    (tmp_path / "t.txt").write_text("one\ntwo\nthree\n")
    build(TextBuildConfig(input=[str(tmp_path / "t.txt")], output_dir=str(tmp_path / "text"), doc_separator="line",
                          train_split=0.5))
    with pytest.raises(ValueError, match="no source is a leveled dataset"):
        open_tasks(suite, f"dataset.sources.tasks.path={tmp_path / 'text'}",
                   "dataset.stages=[{name: a, difficulty: 1}]")
