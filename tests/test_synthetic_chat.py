"""Tests of the synthetic chat generator (examples/make_synthetic_chat.py): format, reproducibility, correct
arithmetic, a held-out set that never leaks into training, the mix of kinds and multi-turn recall (CPU, ~1 s).

The checks parse the generated text back with their own patterns instead of trusting the generator's tables,
so a changed phrasing or answer format shows up here."""
import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "make_synthetic_chat.py"

_spec = importlib.util.spec_from_file_location("make_synthetic_chat", SCRIPT)
chat = importlib.util.module_from_spec(_spec)
sys.modules["make_synthetic_chat"] = chat
_spec.loader.exec_module(chat)

SEED = 0
N = 4000

# Any arithmetic problem, in any phrasing, anywhere in a turn.
PROBLEM = re.compile(r"(\d+) ?([-+*]|plus|minus|times) ?(\d+)")
ANSWER = re.compile(r"^(\d+) ([-+*]) (\d+) = (-?\d+)\.$")
SYMBOL = {"plus": "+", "minus": "-", "times": "*", "+": "+", "-": "-", "*": "*"}
COMPUTE = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}

STATEMENTS = {  # slot: how the user states it
    "name": re.compile(r"^(?:My name is|I'm|Call me) ([A-Z][a-z]+)\.$"),
    "colour": re.compile(r"^(?:My favourite colour is|I love the colour) ([a-z]+)\.$"),
    "food": re.compile(r"^(?:My favourite food is|I love eating) ([a-z]+)\.$"),
    "city": re.compile(r"^(?:I live in|My home is in) ([A-Z][a-z]+)\.$"),
    "age": re.compile(r"^(?:I am|I'm) (\d+) years old\.$"),
    "pets": re.compile(r"^I (?:have|own) (\d+ [a-z]+)\.$"),
}
RECALL_ANSWERS = {  # slot: how the assistant recalls it
    "name": re.compile(r"^Your name is ([A-Z][a-z]+)\.$"),
    "colour": re.compile(r"^Your favourite colour is ([a-z]+)\.$"),
    "food": re.compile(r"^Your favourite food is ([a-z]+)\.$"),
    "city": re.compile(r"^You live in ([A-Z][a-z]+)\.$"),
    "age": re.compile(r"^You are (\d+) years old\.$"),
    "pets": re.compile(r"^You have (\d+ [a-z]+)\.$"),
}
RECALL_QUESTIONS = {  # slot: a word the question about it must contain
    "name": "name", "colour": "colour", "food": "food", "city": "live", "age": "old|age", "pets": "How many",
}
FACT_ANSWER = re.compile(
    r"^(The capital of [A-Z]\w+ is [A-Z][\w ]+|The day (after|before) \w+day is \w+day|The opposite of \w+ is \w+"
    r"|[A-Z][\w ]* is [a-z]+|An? [a-z]+ says [a-z]+)\.$"
)
GREETING_ANSWERS = {"Hello! How can I help you today?", "I am doing well, thank you!", "I am a small chat assistant.",
                    "You are welcome!", "Goodbye! Have a nice day."}
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


@pytest.fixture(scope="module")
def data():
    return chat.generate(N, SEED)


def turns(conversation: dict) -> list[dict]:
    return conversation["conversations"]


def problems_in(text: str) -> list[tuple[int, str, int]]:
    return [(int(a), SYMBOL[op], int(b)) for a, op, b in PROBLEM.findall(text)]


def canonical(a: int, op: str, b: int) -> tuple[int, str, int]:
    """'128 + 347' is the same problem as '347 + 128'."""
    return (min(a, b), op, max(a, b)) if op in "+*" else (a, op, b)


def numbers_masked(text: str) -> str:
    return re.sub(r"\d+", "N", text)


def stated_values(conversation: dict) -> dict[str, str]:
    values = {}
    for t in turns(conversation):
        if t["from"] == "human":
            for slot, pattern in STATEMENTS.items():
                if m := pattern.match(t["value"]):
                    values[slot] = m.group(1)
    return values


def kind_of(conversation: dict) -> str:
    ts = turns(conversation)
    if ts[0]["from"] == "system":
        return "system"
    if stated_values(conversation):
        return "recall"
    if any(problems_in(t["value"]) for t in ts):
        return "arithmetic"
    if any(FACT_ANSWER.match(t["value"]) for t in ts if t["from"] == "gpt"):
        return "facts"
    if all(t["value"] in GREETING_ANSWERS for t in ts if t["from"] == "gpt"):
        return "greeting"
    return "unknown"


# ----------------------------------------------------------------------------- files and reproducibility


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_same_seed_same_bytes_different_seed_different_data(tmp_path):
    args = ["--num-conversations", "600", "--num-heldout", "50", "--quiet"]
    chat.main(["--output-dir", str(tmp_path / "a"), "--seed", "7", *args])
    subprocess.run([sys.executable, str(SCRIPT), "--output-dir", str(tmp_path / "b"), "--seed", "7", *args], check=True)
    chat.main(["--output-dir", str(tmp_path / "c"), "--seed", "8", *args])
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert list(a) == ["heldout_arithmetic.jsonl", "train.json", "valid.json"]
    assert a == b  # the CLI and main() agree byte for byte
    for name in a:
        assert a[name] != c[name]
    train = json.loads(a["train.json"])
    valid = json.loads(a["valid.json"])
    heldout = [json.loads(line) for line in a["heldout_arithmetic.jsonl"].decode().splitlines()]
    assert (len(train), len(valid), len(heldout)) == (570, 30, 50)
    assert (train, valid, heldout) == chat.generate(600, 7, num_heldout=50)


def test_sizes_and_no_valid_file(tmp_path):
    train, valid, heldout = chat.generate(101, 3, valid_fraction=0.1, num_heldout=20)
    assert (len(train), len(valid), len(heldout)) == (91, 10, 20)
    chat.main(["--output-dir", str(tmp_path), "--num-conversations", "50", "--valid-fraction", "0", "--quiet"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heldout_arithmetic.jsonl", "train.json"]
    assert len(json.loads((tmp_path / "train.json").read_text())) == 50
    for n in (1, 7, 99, 4000):
        assert sum(chat.kind_counts(n).values()) == n


# ----------------------------------------------------------------------------- format and lengths


def test_every_conversation_is_valid_sharegpt(data):
    train, valid, _ = data
    assert len(train) + len(valid) == N and len(valid) == N // 20
    for conversation in train + valid:
        assert list(conversation) == ["conversations"]
        ts = turns(conversation)
        roles = [t["from"] for t in ts]
        body = roles[1:] if roles[0] == "system" else roles
        assert len(body) >= 2 and len(body) % 2 == 0, roles
        assert body == ["human", "gpt"] * (len(body) // 2), roles
        for t in ts:
            assert set(t) == {"from", "value"}
            assert isinstance(t["value"], str) and t["value"].strip() == t["value"] and t["value"]


def test_lengths_are_short(data):
    lengths = [sum(len(t["value"]) for t in turns(c)) for c in data[0] + data[1]]
    assert max(lengths) <= 300
    assert sum(lengths) / len(lengths) < 100
    assert sum(n < 120 for n in lengths) / len(lengths) > 0.8
    assert all(len(t["value"]) <= 80 for c in data[0] + data[1] for t in turns(c))


def test_kinds_are_all_present_in_proportion(data):
    counts = Counter(kind_of(c) for c in data[0] + data[1])
    assert counts["unknown"] == 0, counts
    for kind in ("greeting", "arithmetic", "facts", "recall", "system"):
        assert 0.08 <= counts[kind] / N <= 0.35, counts
    system_prompts = {turns(c)[0]["value"] for c in data[0] if kind_of(c) == "system"}
    assert len(system_prompts) >= 3


# ----------------------------------------------------------------------------- arithmetic


def test_arithmetic_answers_are_correct(data):
    checked = Counter()
    for conversation in data[0] + data[1]:
        ts = turns(conversation)
        for question, reply in zip(ts, ts[1:]):
            if question["from"] != "human" or not (found := problems_in(question["value"])):
                continue
            assert len(found) == 1, question
            a, op, b = found[0]
            m = ANSWER.match(reply["value"])
            assert m, reply
            assert (int(m[1]), m[2], int(m[3])) == (a, op, b)
            assert int(m[4]) == COMPUTE[op](a, b)
            if op == "*":  # a 2-digit number times a 1-digit one, in either order
                assert 2 <= min(a, b) <= 9 and 10 <= max(a, b) <= 99, question
            else:  # 2 or 3 digits each, never a negative result
                assert 10 <= min(a, b) and max(a, b) <= 999 and (op == "+" or a >= b), question
            checked[op] += 1
    assert checked["+"] > 300 and checked["-"] > 300 and checked["*"] > 100, checked


def test_heldout_problems_never_appear_in_train_or_valid(data):
    train, valid, heldout = data
    held = {canonical(*problems_in(h["prompt"])[0]) for h in heldout}
    seen = set()
    for conversation in train + valid:
        for t in turns(conversation):  # every turn, so a held-out problem cannot hide in a reply or filler
            for a, op, b in problems_in(t["value"]):
                seen.add(canonical(a, op, b))
                assert not chat.is_heldout(a, op, b, SEED), t
    assert not seen & held
    assert len(seen) > 1000  # real coverage, not a handful of repeated problems
    # the rule is symmetric for + and * and holds out about 5% of the problems
    grid = [(a, b) for a in range(10, 1000, 7) for b in range(10, 1000, 11)]
    share = sum(chat.is_heldout(a, "+", b, SEED) for a, b in grid) / len(grid)
    assert 0.04 < share < 0.06
    assert all(chat.is_heldout(a, "+", b, SEED) == chat.is_heldout(b, "+", a, SEED) for a, b in grid)
    assert sum(chat.is_heldout(a, "+", b, SEED) != chat.is_heldout(a, "+", b, SEED + 1) for a, b in grid) > 0


def test_heldout_file_answers_are_correct(data):
    heldout = data[2]
    assert len(heldout) == 200
    problems = []
    for item in heldout:
        assert set(item) == {"prompt", "answer"}
        found = problems_in(item["prompt"])
        assert len(found) == 1, item
        a, op, b = found[0]
        assert chat.is_heldout(a, op, b, SEED)
        assert re.fullmatch(r"\d+", item["answer"]) and int(item["answer"]) == COMPUTE[op](a, b)
        problems.append(canonical(a, op, b))
    assert len(set(problems)) == len(problems)  # distinct
    ops = Counter(op for _, op, _ in problems)
    assert ops["+"] >= 50 and ops["-"] >= 50 and ops["*"] >= 10, ops
    # prompts are phrased like training questions: the same templates with the numbers masked out
    train_questions = {numbers_masked(t["value"]) for c in data[0] for t in turns(c) if t["from"] == "human"}
    assert {numbers_masked(h["prompt"]) for h in heldout} <= train_questions


# ----------------------------------------------------------------------------- facts, recall, system


def test_answers_depend_only_on_the_question_when_there_is_no_context(data):
    answers = defaultdict(set)
    for conversation in data[0]:
        ts = turns(conversation)
        if len(ts) == 2 and ts[0]["from"] == "human":
            answers[ts[0]["value"]].add(ts[1]["value"])
    assert len(answers) > 500
    assert all(len(a) == 1 for a in answers.values()), [q for q, a in answers.items() if len(a) > 1][:5]


def test_facts_are_right(data):
    facts = {t["value"] for c in data[0] for t in turns(c) if t["from"] == "gpt" and FACT_ANSWER.match(t["value"])}
    assert "The capital of France is Paris." in facts or "The capital of Japan is Tokyo." in facts
    opposites = {}
    for fact in facts:
        if m := re.match(r"^The day (after|before) (\w+) is (\w+)\.$", fact):
            step = 1 if m[1] == "after" else -1
            assert WEEKDAYS[(WEEKDAYS.index(m[2]) + step) % 7] == m[3], fact
        if m := re.match(r"^The opposite of (\w+) is (\w+)\.$", fact):
            opposites[m[1]] = m[2]
    assert opposites and all(opposites.get(b, a) == a for a, b in opposites.items())
    topics = ["The capital of", "The day after", "The day before", "The opposite of", " says ", " is "]
    assert all(sum(t in f for f in facts) >= 5 for t in topics)


def test_recall_answers_what_was_stated_earlier(data):
    checked = Counter()
    for conversation in data[0] + data[1]:
        if kind_of(conversation) != "recall":
            continue
        ts = turns(conversation)
        question, answer = ts[-2]["value"], ts[-1]["value"]
        slots = [s for s, p in RECALL_ANSWERS.items() if p.match(answer)]
        assert len(slots) == 1, answer
        slot = slots[0]
        assert re.search(RECALL_QUESTIONS[slot], question), (question, answer)
        stated = stated_values({"conversations": ts[:-2]})
        assert RECALL_ANSWERS[slot].match(answer)[1] == stated[slot], ts
        assert 2 <= len(ts) // 2 <= 3  # asked one or two turns after the statement
        statement_turn = next(i for i, t in enumerate(ts)
                              if t["from"] == "human" and STATEMENTS[slot].match(t["value"]))
        checked["distance %d" % ((len(ts) - 2 - statement_turn) // 2)] += 1
        checked[slot] += 1
        if len(stated) == 2:
            checked["two statements"] += 1
    assert checked["distance 1"] > 100 and checked["distance 2"] > 100, checked
    assert checked["two statements"] > 100, checked
    assert all(checked[s] > 50 for s in STATEMENTS), checked
    names = [v for c in data[0] for s, v in stated_values(c).items() if s == "name"]
    assert len(set(names)) >= 15  # values are drawn, so the answer cannot be memorised


def test_system_named_assistant_answers_with_its_name(data):
    named = 0
    for conversation in data[0] + data[1]:
        ts = turns(conversation)
        if ts[0]["from"] == "system" and re.search(r"your name\?$", ts[-2]["value"], re.I):
            name = re.match(r"^(?:You are|Your name is) ([A-Z][a-z]+)[.,]", ts[0]["value"])[1]
            assert ts[-1]["value"] == f"My name is {name}.", ts
            named += 1
    assert named > 50


@pytest.mark.parametrize("script, options, message", [
    *[(script, ["--output-dir", "{file}"], "argument --output-dir: {file}: exists and is not a directory") for script in
      ("make_synthetic_chat.py", "make_chat_probes.py", "make_synthetic_arc.py", "make_synthetic_text.py")],
    ("make_chat_probes.py", ["--num", "0"], "need --num >= 1 (got 0)"),
    ("make_synthetic_arc.py", ["--num-train", "0", "--output-dir", "out"], "need --num-train >= 1 and --num-unseen >= 0")])
def test_example_scripts_refuse_a_file_as_output_dir_and_empty_counts(tmp_path, script, options, message):
    """Each is a usage error (status 2, no traceback) before anything is written; the file is left as it was."""
    file = tmp_path / "notes.txt"
    file.write_text("keep")
    args = [a.format(file=file) for a in options]
    proc = subprocess.run([sys.executable, str(REPO / "examples" / script), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and message.format(file=file) in proc.stderr and "Traceback" not in proc.stderr
    assert file.read_text() == "keep" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
