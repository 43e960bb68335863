"""Chat record parsing: every format, auto detection, bad-record reports, strict mode and loading."""
import json
from pathlib import Path

import pytest

from dataset.chat_formats import (BadRecord, Conversation, detect_format, load_records, parse_alpaca,
                                  parse_records)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def sg(*turns, **extra):
    """A ShareGPT record from (from, value) pairs."""
    return {"conversations": [{"from": r, "value": v} for r, v in turns], **extra}


def msg(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def oa(mid, parent, role, text, **extra):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "lang": "en", **extra}


# ----------------------------------------------------------------------------- formats

def test_sharegpt_human_gpt_and_aliases():
    records = [
        sg(("human", "Name a prime."), ("gpt", "7"), ("human", "Another?"), ("gpt", "11")),
        sg(("system", "Be brief."), ("User", "Hi"), ("ASSISTANT", "Hello.")),
        sg(("prompter", "a"), ("chatgpt", "b"), ("user", "c"), ("bard", "d"), ("human", "e"), ("claude", "f"),
           ("human", "g"), ("model", "h"), ("human", "i"), ("bot", "j")),
    ]
    convs, report = parse_records(records, "sharegpt")
    assert report.skipped == 0 and report.total == 3
    assert convs[0] == Conversation([("user", "Name a prime."), ("assistant", "7"), ("user", "Another?"),
                                     ("assistant", "11")], 0)
    assert convs[1].turns == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello.")]
    assert [r for r, _ in convs[2].turns] == ["user", "assistant"] * 5
    assert [c.source_index for c in convs] == [0, 1, 2]


def test_sharegpt_messages_key_and_top_level_system():
    records = [
        {"messages": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        sg(("human", "q"), ("gpt", "a"), system="You are terse."),
        sg(("human", "q"), ("gpt", "a"), system=""),  # an empty system prompt is no system turn
        sg(("system", "s"), ("human", "q"), ("gpt", "a"), system="t"),
    ]
    convs, report = parse_records(records, "sharegpt")
    assert [c.turns for c in convs[:3]] == [[("user", "q"), ("assistant", "a")],
                                            [("system", "You are terse."), ("user", "q"), ("assistant", "a")],
                                            [("user", "q"), ("assistant", "a")]]
    assert report.counts == {"system_not_first": 1} and report.examples == {"system_not_first": [3]}


def test_messages_format():
    records = [
        msg(("system", "You answer in French."), ("user", "Hello"), ("assistant", "Bonjour"),
            ("user", "Thanks"), ("assistant", "De rien")),
        msg(("user", "Part one of my question."), ("user", "Part two."), ("assistant", "Both answered.")),
        msg(("human", "alias"), ("gpt", "ok")),
    ]
    convs, report = parse_records(records, "messages")
    assert len(convs) == 3 and report.skipped == 0
    assert convs[0].turns[0] == ("system", "You answer in French.") and convs[0].turns[-1] == ("assistant", "De rien")
    assert convs[1].turns == [("user", "Part one of my question."), ("user", "Part two."),
                              ("assistant", "Both answered.")]  # kept as is, not merged
    assert report.note_counts == {"consecutive_user": 1} and report.note_examples == {"consecutive_user": [1]}
    assert "notes: 1 consecutive_user (record 1)" in report.summary()
    assert convs[2].turns == [("user", "alias"), ("assistant", "ok")]


def test_alpaca_with_and_without_input_and_system():
    records = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue"},
        {"instruction": "Name a fruit.", "output": "Pear"},
        {"instruction": "Reply formally.", "input": None, "output": "Certainly.", "system": "You are a butler."},
        {"instruction": "", "input": "Translate 'cat' to German.", "output": "Katze"},
    ]
    convs, report = parse_records(records, "alpaca")
    assert report.skipped == 0
    assert [c.turns for c in convs] == [
        [("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")],
        [("user", "Name a colour."), ("assistant", "Blue")],
        [("user", "Name a fruit."), ("assistant", "Pear")],
        [("system", "You are a butler."), ("user", "Reply formally."), ("assistant", "Certainly.")],
        [("user", "Translate 'cat' to German."), ("assistant", "Katze")],
    ]


def oasst_records():
    """Two trees. Tree 1 branches into three threads, has a deleted reply (with a reply below it) and an
    unanswered follow-up; tree 2 has one thread; then an orphan with a child."""
    return [
        oa("p1", None, "prompter", "How do I boil an egg?"),  # 0
        oa("a1", "p1", "assistant", "Simmer it for 9 minutes.", rank=1),  # 1
        oa("a2", "p1", "assistant", "Put it in boiling water for 7 to 10 minutes.", rank=0),  # 2
        oa("p2", "a1", "prompter", "And a soft one?"),  # 3
        oa("a3", "p2", "assistant", "About 6 minutes."),  # 4
        oa("a4", "p1", "assistant", "spam", deleted=True, rank=2),  # 5
        oa("p3", "a4", "prompter", "what?"),  # 6
        oa("p4", "a2", "prompter", "Thanks!"),  # 7: no reply
        oa("q1", None, "prompter", "Capital of Peru?"),  # 8
        oa("b1", "q1", "assistant", "Lima."),  # 9
        oa("x1", "missing", "prompter", "lost"),  # 10: orphan
        oa("x2", "x1", "assistant", "also lost"),  # 11: below the orphan
        oa("a5", "p2", "assistant", "Six minutes, then cold water.", rank=0),  # 12: better than a3 (unranked)
    ]


def test_oasst_threads_per_leaf():
    convs, report = parse_records(oasst_records(), "oasst")
    q = "How do I boil an egg?"
    assert [c.turns for c in convs] == [
        [("user", q), ("assistant", "Simmer it for 9 minutes."), ("user", "And a soft one?"),
         ("assistant", "About 6 minutes.")],
        [("user", q), ("assistant", "Simmer it for 9 minutes."), ("user", "And a soft one?"),
         ("assistant", "Six minutes, then cold water.")],
        [("user", q), ("assistant", "Put it in boiling water for 7 to 10 minutes.")],  # "Thanks!" trimmed
        [("user", "Capital of Peru?"), ("assistant", "Lima.")],
    ]
    assert [c.source_index for c in convs] == [4, 12, 2, 9]
    assert report.total == 13
    assert report.counts == {"deleted": 2, "orphan": 2, "no_assistant": 1}
    assert report.examples == {"deleted": [5, 6], "orphan": [10, 11], "no_assistant": [7]}
    assert report.summary() == ("skipped 5 of 13 records: 2 deleted (records 5, 6), 2 orphan (records 10, 11), "
                                "1 no_assistant (record 7)")


def test_oasst_best_only_follows_lowest_rank():
    convs, report = parse_records(oasst_records(), "oasst", best_only=True)
    assert [c.turns[-1][1] for c in convs] == ["Put it in boiling water for 7 to 10 minutes.", "Lima."]
    assert report.counts == {"deleted": 2, "orphan": 2, "no_assistant": 1}
    assert report.note_counts == {"not_best": 4} and report.note_examples["not_best"] == [1, 3, 4, 12]
    records = oasst_records()
    records[2]["deleted"] = True  # now a1 is the best reply left, and below it a5 (rank 0) beats a3 (no rank)
    convs, _ = parse_records(records, "oasst", best_only=True)
    assert [t for _, t in convs[0].turns] == ["How do I boil an egg?", "Simmer it for 9 minutes.", "And a soft one?",
                                              "Six minutes, then cold water."]


def test_oasst_broken_trees():
    records = [
        oa("r", None, "prompter", "q"),  # 0
        oa("r2", "r", "prompter", "q again"),  # 1: consecutive_user
        oa("r3", "r2", "assistant", "a"),  # 2: below it
        oa("a", "r", "assistant", "a"),  # 3
        oa("a", "r", "assistant", "dup"),  # 4: duplicate_id
        oa("b", "a", "assistant", "again"),  # 5: consecutive_assistant
        oa("c1", "c2", "prompter", "x"),  # 6: cycle
        oa("c2", "c1", "assistant", "y"),  # 7: cycle
        oa("e", "r", "assistant", "  "),  # 8: empty_turn
        oa("n", "a", "narrator", "z"),  # 9: unknown_role
        oa("s", "a", "system", "late"),  # 10: system_not_first
        {"parent_id": "r", "role": "assistant", "text": "no id"},  # 11: missing_field
        oa("w", "r", "assistant", 42),  # 12: wrong_type
        oa("w2", "w", "prompter", "below the bad one"),  # 13: counted with its parent
    ]
    convs, report = parse_records(records, "oasst")
    assert [c.turns for c in convs] == [[("user", "q"), ("assistant", "a")]]
    assert report.counts == {"consecutive_user": 2, "duplicate_id": 1, "consecutive_assistant": 1, "orphan": 2,
                             "empty_turn": 1, "unknown_role": 1, "system_not_first": 1, "missing_field": 1,
                             "wrong_type": 2}
    assert report.examples["consecutive_user"] == [1, 2] and report.examples["orphan"] == [6, 7]
    assert report.examples["wrong_type"] == [12, 13]
    assert report.skipped + 2 == report.total  # every record is used or counted


# ----------------------------------------------------------------------------- auto detection

@pytest.mark.parametrize("records, fmt", [
    ([sg(("human", "q"), ("gpt", "a"))], "sharegpt"),
    ([{"messages": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}], "sharegpt"),
    ([msg(("user", "q"), ("assistant", "a"))], "messages"),
    ([{"instruction": "i", "input": "", "output": "o"}], "alpaca"),
    ([oa("p", None, "prompter", "q"), oa("a", "p", "assistant", "a")], "oasst"),
    # the `datasets` loader fills keys missing from one record with None: those must not count
    ([{"conversations": None, "instruction": "i", "output": "o"}], "alpaca"),
    ([{"bad": 1}, 7, msg(("user", "q"), ("assistant", "a"))], "messages"),
])
def test_auto_detection(records, fmt):
    assert detect_format(records) == fmt
    convs, _ = parse_records(records)
    assert convs and convs[-1].turns[-1][0] == "assistant"


def test_auto_detection_errors():
    with pytest.raises(ValueError, match="cannot tell the chat format.*'prompt'.*pass fmt="):
        parse_records([{"prompt": "p", "completion": "c"}])
    with pytest.raises(ValueError, match="mix chat formats.*record 0 like sharegpt, record 1 like alpaca"):
        parse_records([sg(("human", "q"), ("gpt", "a")), {"instruction": "i", "output": "o"}])
    with pytest.raises(ValueError, match="unknown chat format 'chatml'"):
        parse_records([msg(("user", "q"), ("assistant", "a"))], "chatml")
    convs, report = parse_records([])
    assert convs == [] and report.summary() == "skipped 0 of 0 records"


# ----------------------------------------------------------------------------- bad records

def bad_sharegpt_records():
    good = sg(("human", "q"), ("gpt", "a"))
    return [
        good,  # 0
        {"id": "no turns"},  # 1 missing_field
        {"conversations": "human: hi"},  # 2 wrong_type
        sg(("human", "q"), ("narrator", "Once upon a time")),  # 3 unknown_role
        sg(("human", "q"), ("gpt", "   ")),  # 4 empty_turn
        sg(("human", "q")),  # 5 no_assistant
        sg(("human", "q"), ("gpt", "a"), ("gpt", "b")),  # 6 consecutive_assistant
        sg(("human", "q"), ("human", "q2"), ("gpt", "a")),  # 7 consecutive_user (forbidden in sharegpt)
        sg(("human", "q"), ("system", "s"), ("gpt", "a")),  # 8 system_not_first
        {"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "a"}]},  # 9 wrong_type
        {"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]},  # 10 missing_field
        {"conversations": [{"from": None, "value": "q"}, {"from": "gpt", "value": "a"}]},  # 11 missing_field
        sg(("human", "q"), ("gpt", "")),  # 12 empty_turn
        "not a record",  # 13 wrong_type
        good,  # 14
        sg(("Narrator", "x"), ("gpt", "a")),  # 15 unknown_role
        sg(),  # 16 no_assistant
    ]


def test_every_bad_record_kind_is_counted():
    convs, report = parse_records(bad_sharegpt_records(), "sharegpt")
    assert [c.source_index for c in convs] == [0, 14]
    assert report.total == 17 and report.skipped == 15
    assert report.counts == {"missing_field": 3, "wrong_type": 3, "unknown_role": 2, "empty_turn": 2,
                             "no_assistant": 2, "consecutive_assistant": 1, "consecutive_user": 1,
                             "system_not_first": 1}
    assert report.examples == {"missing_field": [1, 10, 11], "wrong_type": [2, 9, 13], "unknown_role": [3, 15],
                               "empty_turn": [4, 12], "no_assistant": [5, 16], "consecutive_assistant": [6],
                               "consecutive_user": [7], "system_not_first": [8]}
    assert report.summary() == (
        "skipped 15 of 17 records: 3 missing_field (records 1, 10, 11: no 'conversations' (or 'messages') list; "
        "turn 0 has no 'value' or 'content'; turn 0 has no 'from' or 'role'), 3 wrong_type (records 2, 9, 13), "
        "2 unknown_role (records 3, 15), 2 empty_turn (records 4, 12), 2 no_assistant (records 5, 16), "
        "1 consecutive_assistant (record 6), 1 consecutive_user (record 7), 1 system_not_first (record 8)")


def test_bad_messages_and_alpaca_records():
    records = [msg(("user", "q"), ("tool", "{}"), ("assistant", "a")), {"messages": None, "id": 3},
               {"messages": [{"role": "user", "content": None}]}, msg(("assistant", "hello"), ("assistant", "again"))]
    _, report = parse_records(records, "messages")
    assert report.counts == {"unknown_role": 1, "missing_field": 2, "consecutive_assistant": 1}
    records = [{"instruction": "i", "output": None}, {"instruction": "i", "output": 3}, {"input": "x", "output": "o"},
               {"instruction": " ", "input": "", "output": "o"}, {"instruction": "i", "output": "\n"},
               {"instruction": "i", "output": "o", "system": ["s"]}]
    _, report = parse_records(records, "alpaca")
    assert report.counts == {"missing_field": 2, "wrong_type": 2, "empty_turn": 2}
    assert report.examples == {"missing_field": [0, 2], "wrong_type": [1, 5], "empty_turn": [3, 4]}
    with pytest.raises(BadRecord) as e:
        parse_alpaca({"instruction": "i"})
    assert e.value.reason == "missing_field" and e.value.detail == "no 'output'"


def test_an_explicit_format_that_fits_no_record_names_the_format_they_look_like():
    records = [msg(("user", f"Say {i}"), ("assistant", str(i))) for i in range(4)]
    for strict in (False, True):
        with pytest.raises(ValueError, match="look like the messages format, not oasst "
                                             r"\(use --format messages or auto\)"):
            parse_records(records, "oasst", strict=strict)
    with pytest.raises(ValueError, match="look like the sharegpt format, not alpaca"):
        parse_records([sg(("human", "q"), ("gpt", "a"))], "alpaca")
    # records of no known format, or a file where some records fit, stay a report of bad records
    convs, report = parse_records([{"prompt": "p"}] * 2, "oasst")
    assert convs == [] and "2 missing_field (records 0, 1: no 'message_id')" in report.summary()
    convs, report = parse_records(records + [{"instruction": "i"}], "messages")
    assert len(convs) == 4 and "1 missing_field (record 4: no 'messages' list)" in report.summary()


def test_examples_are_capped_but_all_counted():
    records = [sg(("human", "q"), ("gpt", "a"))] + [sg(("human", "q"))] * 8
    _, report = parse_records(records, "sharegpt")
    assert report.counts == {"no_assistant": 8} and report.examples == {"no_assistant": [1, 2, 3, 4, 5]}
    assert report.summary() == "skipped 8 of 9 records: 8 no_assistant (records 1, 2, 3, 4, 5, ...)"


def test_strict_raises_on_the_first_bad_record():
    records = [sg(("human", "q"), ("gpt", "a")), sg(("human", "q"), ("gpt", "a"), ("narrator", "The end."))] \
        + bad_sharegpt_records()
    with pytest.raises(ValueError) as e:
        parse_records(records, "sharegpt", strict=True)
    assert str(e.value) == "record 1: unknown_role: role 'narrator' in turn 2"
    with pytest.raises(ValueError, match=r"^record 5: deleted: message 'a4' is deleted$"):
        parse_records(oasst_records(), strict=True)  # the lowest index, though the orphans are found first
    convs, report = parse_records(records[:1] * 3, strict=True)
    assert len(convs) == 3 and report.skipped == 0


# ----------------------------------------------------------------------------- loading

CHAT = [sg(("human", "Hi"), ("gpt", "Hello!")),
        sg(("system", "Be kind."), ("human", "Bye"), ("gpt", "Goodbye!"), source="forum")]


def test_load_json_list_and_jsonl(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(CHAT))
    records = load_records(str(path))
    assert records[1]["conversations"] == CHAT[1]["conversations"]
    assert records[0]["source"] is None  # the missing key, filled in by `datasets`
    convs, report = parse_records(records)
    assert report.skipped == 0 and convs[1].turns[0] == ("system", "Be kind.")

    lines = tmp_path / "chat.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in CHAT))
    assert load_records(str(lines)) == records
    as_json_lines = tmp_path / "lines.json"  # a .json file may hold JSON lines too
    as_json_lines.write_text(lines.read_text())
    assert load_records(str(as_json_lines)) == records


def test_load_directory_in_name_order(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"instruction": "second", "output": "2"}) + "\n")
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "first", "output": "1", "input": "x"}]))
    (tmp_path / "c.jsonl").write_text("\n")  # empty: no records
    (tmp_path / "notes.txt").write_text("not data")
    records = load_records(str(tmp_path))
    assert [r["instruction"] for r in records] == ["first", "second"]
    convs, report = parse_records(records)
    assert report.skipped == 0 and convs[0].turns[0] == ("user", "first\n\nx")


def test_load_oasst_export_through_datasets(tmp_path):
    """Only some messages carry `deleted` and `rank`; the loader fills the rest with None."""
    path = tmp_path / "oasst.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in oasst_records()))
    records = load_records(str(path))
    assert records[0]["deleted"] is None and records[0]["rank"] is None
    convs, report = parse_records(records)
    expected, expected_report = parse_records(oasst_records(), "oasst")
    assert convs == expected and report == expected_report


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('[{"conversations": []}, {"conversations": ')
    with pytest.raises(ValueError, match=r"broken\.json: not a JSON list of records or JSON lines") as e:
        load_records(str(bad))
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.jsonl: file not found"):
        load_records(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no .json or .jsonl files"):
        load_records(str(tmp_path / "empty_dir"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="expected a .json or .jsonl file"):
        load_records(str(tmp_path / "data.csv"))
    (tmp_path / "empty.json").write_text("[ ]\n")
    assert load_records(str(tmp_path / "empty.json")) == []


def test_hub_names_go_to_load_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        if name == "someone/missing":
            raise FileNotFoundError("Dataset 'someone/missing' doesn't exist on the Hub")
        return datasets.Dataset.from_list([{"instruction": "i", "output": "o"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_records("someone/alpaca-like", split="validation") == [{"instruction": "i", "output": "o"}]
    assert calls == [("someone/alpaca-like", "validation")]
    with pytest.raises(ValueError, match="'someone/missing' is not a local path.*doesn't exist on the Hub"):
        load_records("someone/missing")


@pytest.mark.parametrize("name, fmt, count", [("example_chat_data.json", "sharegpt", 8),
                                              ("example_alpaca_data.json", "alpaca", 6)])
def test_example_files_parse_cleanly(name, fmt, count):
    records = load_records(str(EXAMPLES / name))
    assert detect_format(records) == fmt
    convs, report = parse_records(records, strict=True)
    assert len(convs) == count and report.skipped == 0 and not report.note_counts
    assert all(c.turns[-1][0] == "assistant" for c in convs)
    if fmt == "sharegpt":
        assert any(c.turns[0][0] == "system" for c in convs) and any(len(c.turns) >= 4 for c in convs)
    else:
        assert any("\n\n" in c.turns[0][1] for c in convs)  # some records have an input
