"""Raw chat records -> conversations: a list of (role, text) turns with role in {system, user, assistant}.

Formats:
  sharegpt  {"conversations": [{"from": "human", "value": ...}, ...]}  ("messages" also accepted as the key,
            plus an optional top-level "system" string)
  messages  {"messages": [{"role": "user", "content": ...}, ...]}  (OpenAI style)
  alpaca    {"instruction", "input"?, "output", "system"?}
  oasst     OpenAssistant message trees as flat records: message_id, parent_id, role, text, deleted?, rank?
  auto      detected from the keys of the first records
An explicit format that fits none of the records while they look like another format is a ValueError naming it.

Turn items of sharegpt and messages records may use either key pair (from/value or role/content): real files mix
them. Roles are matched case-insensitively against ROLE_ALIASES.

Rules every conversation must follow (a record that breaks one is skipped and counted under the reason):
  - a system turn may only come first (system_not_first)
  - no two assistant turns in a row (consecutive_assistant): the second reply has no prompt
  - at least one assistant turn (no_assistant): otherwise there is nothing to train on
  - no empty or whitespace-only turn (empty_turn)
Two user turns in a row (consecutive_user) are forbidden in sharegpt and oasst, whose data strictly alternate
(a repeated human turn there means a lost reply), and allowed in messages, like the OpenAI API allows them: such
records are kept as they are (not merged) and listed as notes in the report. A conversation may start with an
assistant turn (a greeting) and may end with a user turn.

OASST trees become one conversation per thread: the path from a root to every assistant message that has no
usable assistant reply below it, so a trailing prompter message without a reply is left out (and counted as
no_assistant when it ends up in no thread). Threads share their common prefix. With best_only, each tree gives
one thread that follows the best-ranked usable reply (lowest rank, unranked last, then file order) at each level;
the messages it leaves out are listed as not_best notes. A message that is dropped (deleted, invalid, orphaned,
or breaking the rules above against its parent) takes its whole subtree with it: every message in the subtree is
counted under the same reason. Each message record is counted once, either used or under one reason.

Record indices (positions in the loaded list) and turn numbers are 0-based.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

Turn = tuple[str, str]  # (role, text)

ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "model": "assistant", "bard": "assistant", "claude": "assistant",
}
FORMATS = ("sharegpt", "messages", "alpaca", "oasst")
REASONS = (  # fixed keys, so reports from different files can be added up
    "missing_field", "wrong_type", "unknown_role", "empty_turn", "no_assistant", "consecutive_assistant",
    "consecutive_user", "system_not_first", "orphan", "deleted", "duplicate_id",
)
NOTES = ("consecutive_user", "not_best")  # records worth knowing about that are not errors
DETAILED = ("missing_field",)  # reasons whose summary also says what (which field), from the first few records
JSON_SUFFIXES = (".json", ".jsonl")


class BadRecord(Exception):
    """A malformed record; `reason` is one of REASONS, `detail` says where and what."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Conversation:
    turns: list[Turn]
    source_index: int  # the record it came from (oasst: the thread's last message)


@dataclass
class BadRecordReport:
    total: int = 0  # records looked at
    counts: dict[str, int] = field(default_factory=dict)  # skipped records by reason
    examples: dict[str, list[int]] = field(default_factory=dict)  # the first few indices per reason
    note_counts: dict[str, int] = field(default_factory=dict)  # by note (see NOTES)
    note_examples: dict[str, list[int]] = field(default_factory=dict)
    details: dict[str, list[str]] = field(default_factory=dict)  # distinct details of the DETAILED reasons
    max_examples: int = 5
    max_details: int = 3

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def add(self, index: int, reason: str, detail: str = "") -> None:
        _tally(self.counts, self.examples, index, reason, self.max_examples)
        if reason in DETAILED and detail:
            seen = self.details.setdefault(reason, [])
            if detail not in seen and len(seen) < self.max_details:
                seen.append(detail)

    def note(self, index: int, note: str) -> None:
        assert note in NOTES, note
        _tally(self.note_counts, self.note_examples, index, note, self.max_examples)

    def summary(self) -> str:
        text = f"skipped {self.skipped} of {self.total} records"
        if self.counts:
            text += ": " + _describe(self.counts, self.examples, self.details)
        if self.note_counts:
            text += "; notes: " + _describe(self.note_counts, self.note_examples)
        return text


def _tally(counts: dict[str, int], examples: dict[str, list[int]], index: int, key: str, limit: int) -> None:
    counts[key] = counts.get(key, 0) + 1
    shown = examples.setdefault(key, [])
    if len(shown) < limit:
        shown.append(index)


def _describe(counts: dict[str, int], examples: dict[str, list[int]], details: dict[str, list[str]] | None = None
              ) -> str:
    parts = []
    for key in sorted(counts, key=lambda k: -counts[k]):  # stable: ties keep first-seen order
        shown = ", ".join(map(str, examples[key])) + (", ..." if counts[key] > len(examples[key]) else "")
        what = "; ".join((details or {}).get(key, []))
        what = f": {what}" if what else ""
        parts.append(f"{counts[key]} {key} (record{'s' if counts[key] > 1 else ''} {shown}{what})")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- loading

def load_records(source: str, split: str = "train") -> list[dict]:
    """Records of a .json file (a list, or JSON lines), a .jsonl file, a directory of such files (sorted by
    name, not recursive), or else of a hub dataset split. All go through the `datasets` library, which unifies
    the schema: a key missing from one record comes back as None, so the parsers treat None as missing."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix in JSON_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"{source}: no .json or .jsonl files in this directory")
        return [record for f in files for record in _load_json_file(f)]
    if path.is_file():
        if path.suffix not in JSON_SUFFIXES:
            raise ValueError(f"{source}: expected a .json or .jsonl file")
        return _load_json_file(path)
    if path.suffix in JSON_SUFFIXES or source.startswith(("/", ".", "~")):  # meant as a local path
        raise FileNotFoundError(f"{source}: file not found")
    return _load_hub(source, split)


def _load_json_file(path: Path) -> list[dict]:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    # `datasets` fails on files without records; an empty file or list is just no data.
    if len(head) < 4096 and b"".join(head.split()) in (b"", b"[]"):
        return []
    import datasets  # imported lazily: importing it takes a while and only loading needs it

    # A throwaway cache: the records are copied out anyway, and every file read would otherwise leave an Arrow
    # copy in the user's cache.
    with tempfile.TemporaryDirectory(prefix="chat_records_") as cache_dir:
        try:
            ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)
        except Exception as e:  # parse errors surface as several exception types, wrapped
            raise ValueError(f"{path}: not a JSON list of records or JSON lines ({_cause(e)})") from None
        records = ds.to_list()
        del ds  # release the memory-mapped files before the directory goes
    return records


def _load_hub(name: str, split: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, authentication, unknown name or split: all end the same way
        raise ValueError(f"{name!r} is not a local path, and loading split {split!r} of it from the hub failed "
                         f"({_cause(e)})") from None
    return ds.to_list()


def _cause(e: BaseException) -> str:
    """The informative part of a (possibly wrapped) exception, on one line."""
    if type(e).__name__ == "DatasetGenerationError":  # says only that something failed; the cause says what
        e = e.__cause__ or e.__context__ or e
    lines = str(e).strip().splitlines()
    message = lines[0][:200] if lines else ""
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


# ----------------------------------------------------------------------------- per-record formats

def _get(record: dict, *keys: str) -> Any:
    """The first of `keys` present with a value (None counts as missing: schema unification adds None)."""
    for key in keys:
        value = record.get(key)
        if value is not None:
            return value
    return None


def _need_dict(record: Any, what: str = "record") -> dict:
    if not isinstance(record, dict):
        raise BadRecord("wrong_type", f"{what} is {type(record).__name__}, expected an object")
    return record


def _need_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRecord("wrong_type", f"{what} is {type(value).__name__}, expected a string")
    return value


def normalize_role(role: str, where: str = "") -> str:
    """Map a role name or alias to system/user/assistant, or raise BadRecord("unknown_role")."""
    canonical = ROLE_ALIASES.get(role.strip().lower())
    if canonical is None:
        raise BadRecord("unknown_role", f"role {role!r}" + (f" in {where}" if where else ""))
    return canonical


def _turns(items: Any, key: str) -> list[Turn]:
    """The turns of a list of {from, value} / {role, content} items."""
    if not isinstance(items, list):
        raise BadRecord("wrong_type", f"'{key}' is {type(items).__name__}, expected a list")
    turns = []
    for t, item in enumerate(items):
        _need_dict(item, f"turn {t}")
        role, text = _get(item, "from", "role"), _get(item, "value", "content")
        if role is None:
            raise BadRecord("missing_field", f"turn {t} has no 'from' or 'role'")
        if text is None:
            raise BadRecord("missing_field", f"turn {t} has no 'value' or 'content'")
        role = normalize_role(_need_str(role, f"role of turn {t}"), f"turn {t}")
        if not _need_str(text, f"text of turn {t}").strip():
            raise BadRecord("empty_turn", f"turn {t} ({role}) is empty")
        turns.append((role, text))
    return turns


def _order_problem(prev: str | None, role: str, allow_consecutive_user: bool) -> str | None:
    """The rule a turn breaks by following a turn of role `prev` (None: it comes first), if any."""
    if role == "system" and prev is not None:
        return "system_not_first"
    if role == prev == "assistant":
        return "consecutive_assistant"
    if role == prev == "user" and not allow_consecutive_user:
        return "consecutive_user"
    return None


def check_turns(turns: Sequence[Turn], allow_consecutive_user: bool = False) -> None:
    """Raise BadRecord when the turn order breaks the rules in the module docstring."""
    for t, (role, _) in enumerate(turns):
        prev = turns[t - 1][0] if t else None
        reason = _order_problem(prev, role, allow_consecutive_user)
        if reason:
            raise BadRecord(reason, f"turn {t} ({role}) follows turn {t - 1} ({prev})")
    if not any(role == "assistant" for role, _ in turns):
        raise BadRecord("no_assistant", f"no assistant turn in {len(turns)} turn(s)")


def parse_sharegpt(record: Any) -> list[Turn]:
    record = _need_dict(record)
    key = "conversations" if record.get("conversations") is not None else "messages"
    if record.get(key) is None:
        raise BadRecord("missing_field", "no 'conversations' (or 'messages') list")
    turns = _turns(record[key], key)
    check_turns(turns)
    system = record.get("system")  # some exports keep the system prompt beside the turns
    if system is not None and _need_str(system, "'system'").strip():
        if turns[0][0] == "system":
            raise BadRecord("system_not_first", "a top-level 'system' and a system turn 0")
        turns.insert(0, ("system", system))
    return turns


def parse_messages(record: Any) -> list[Turn]:
    record = _need_dict(record)
    if record.get("messages") is None:
        raise BadRecord("missing_field", "no 'messages' list")
    turns = _turns(record["messages"], "messages")
    check_turns(turns, allow_consecutive_user=True)
    return turns


def parse_alpaca(record: Any) -> list[Turn]:
    """[system], user = instruction + "\\n\\n" + input (either alone when the other is empty), assistant = output."""
    record = _need_dict(record)
    for key in ("instruction", "output"):
        if record.get(key) is None:
            raise BadRecord("missing_field", f"no '{key}'")
    fields = {}
    for key in ("system", "instruction", "input", "output"):
        value = record.get(key)
        fields[key] = "" if value is None else _need_str(value, f"'{key}'")
    prompt = "\n\n".join(fields[k] for k in ("instruction", "input") if fields[k].strip())
    if not prompt:
        raise BadRecord("empty_turn", "'instruction' and 'input' are both empty")
    if not fields["output"].strip():
        raise BadRecord("empty_turn", "'output' is empty")
    system = [("system", fields["system"])] if fields["system"].strip() else []
    return system + [("user", prompt), ("assistant", fields["output"])]


_RECORD_PARSERS: dict[str, Callable[[Any], list[Turn]]] = {
    "sharegpt": parse_sharegpt, "messages": parse_messages, "alpaca": parse_alpaca,
}


# ----------------------------------------------------------------------------- oasst trees

def _is_id(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _oasst_message(record: dict) -> Turn:
    """Check one message (its id already checked); returns its (role, text)."""
    parent = record.get("parent_id")
    if parent is not None and not _is_id(parent):
        raise BadRecord("wrong_type", f"parent_id is {type(parent).__name__}, expected a string")
    deleted = record.get("deleted")
    if deleted not in (None, True, False):
        raise BadRecord("wrong_type", f"'deleted' is {type(deleted).__name__}, expected a boolean")
    if deleted:
        raise BadRecord("deleted", f"message {record['message_id']!r} is deleted")
    rank = record.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, float))):
        raise BadRecord("wrong_type", f"'rank' is {type(rank).__name__}, expected a number")
    role, text = record.get("role"), record.get("text")
    if role is None or text is None:
        raise BadRecord("missing_field", f"no '{'role' if role is None else 'text'}'")
    role = normalize_role(_need_str(role, "'role'"))
    if not _need_str(text, "'text'").strip():
        raise BadRecord("empty_turn", f"{role} message {record['message_id']!r} is empty")
    return role, text


def _parse_oasst(records: Sequence[Any], best_only: bool
                 ) -> tuple[list[Conversation], dict[int, BadRecord], dict[int, str]]:
    """Threads of the message trees (see the module docstring); returns them, the dropped records by index and
    the notes by index."""
    dropped: dict[int, BadRecord] = {}
    by_id: dict[Any, int] = {}
    for i, record in enumerate(records):  # register every usable id first: children of bad messages are not orphans
        try:
            mid = _need_dict(record).get("message_id")
            if mid is None:
                raise BadRecord("missing_field", "no 'message_id'")
            if not _is_id(mid):
                raise BadRecord("wrong_type", f"message_id is {type(mid).__name__}, expected a string")
            if mid in by_id:
                raise BadRecord("duplicate_id", f"message_id {mid!r} already used by record {by_id[mid]}")
        except BadRecord as e:
            dropped[i] = e
            continue
        by_id[mid] = i

    turn: dict[int, Turn] = {}
    children: dict[int, list[int]] = {i: [] for i in by_id.values()}
    roots = []
    for i in by_id.values():
        try:
            turn[i] = _oasst_message(records[i])
        except BadRecord as e:
            dropped[i] = e
        parent = records[i].get("parent_id")
        if parent is None:
            roots.append(i)
        elif _is_id(parent) and by_id.get(parent, i) != i:
            children[by_id[parent]].append(i)
        elif i not in dropped:
            dropped[i] = BadRecord("orphan", f"parent {parent!r} is not among the records")

    # Walk down the trees; a dropped message takes its subtree with it, under its own reason.
    reached: set[int] = set()
    order: list[int] = []  # the valid messages, parents before children
    origin: dict[int, int] = {}  # a message dropped with its ancestor -> that ancestor

    def walk(start: int) -> None:
        stack: list[tuple[int, int | None]] = [(start, None)]
        while stack:
            i, parent = stack.pop()
            if i in reached:  # only possible from a dropped start inside a cycle
                continue
            reached.add(i)
            if parent is not None and parent in dropped:
                source = origin.get(parent, parent)
                if i not in dropped:
                    origin[i] = source
                    dropped[i] = BadRecord(dropped[source].reason, f"below record {source}: {dropped[source].detail}")
            elif parent is not None and i not in dropped:
                reason = _order_problem(turn[parent][0], turn[i][0], allow_consecutive_user=False)
                if reason:
                    dropped[i] = BadRecord(reason, f"{turn[i][0]} message follows its {turn[parent][0]} parent "
                                                   f"(record {parent})")
            if i not in dropped:
                order.append(i)
            stack.extend((c, i) for c in reversed(children[i]))

    for root in roots:
        walk(root)
    for i in by_id.values():  # subtrees hanging from dropped messages outside the trees (orphans, bad parent ids)
        if i in dropped and i not in reached:
            walk(i)
    for i in by_id.values():  # what is left sits in cycles of parent ids, or hangs from one
        if i not in reached:
            dropped[i] = BadRecord("orphan", "not connected to a root (a cycle of parent ids)")

    # A valid message is usable when an assistant reply lies at or below it; threads end at usable assistant
    # messages without usable children.
    usable_children: dict[int, list[int]] = {}
    for i in reversed(order):
        usable_children[i] = [c for c in children[i] if c in usable_children]
        if turn[i][0] != "assistant" and not usable_children[i]:
            del usable_children[i]
            dropped[i] = BadRecord("no_assistant", "no assistant reply at or below this message")

    conversations: list[Conversation] = []
    notes: dict[int, str] = {}
    for root in roots:
        if root not in usable_children:
            continue
        stack = [[root]]
        while stack:
            path = stack.pop()
            below = usable_children[path[-1]]
            if best_only and below:
                best = min(below, key=lambda c: (records[c].get("rank") is None, records[c].get("rank") or 0))
                for c in below:
                    if c != best:
                        _note_subtree(c, usable_children, notes)
                below = [best]
            if not below:
                conversations.append(Conversation([turn[i] for i in path], path[-1]))
            stack.extend(path + [c] for c in reversed(below))
    return conversations, dropped, notes


def _note_subtree(i: int, usable_children: dict[int, list[int]], notes: dict[int, str]) -> None:
    stack = [i]
    while stack:
        j = stack.pop()
        notes[j] = "not_best"
        stack.extend(usable_children[j])


# ----------------------------------------------------------------------------- detection and the entry point

def _record_format(record: Any) -> str | None:
    """The format a single record looks like, from which keys hold values; None when it cannot tell."""
    if not isinstance(record, dict):
        return None
    if record.get("conversations") is not None:
        return "sharegpt"
    items = record.get("messages")
    if isinstance(items, list) and items and isinstance(items[0], dict):
        if _get(items[0], "role", "content") is not None:
            return "messages"
        if _get(items[0], "from", "value") is not None:
            return "sharegpt"
    if record.get("instruction") is not None and record.get("output") is not None:
        return "alpaca"
    if record.get("message_id") is not None and "parent_id" in record:
        return "oasst"
    return None


def detect_format(records: Sequence[Any], sample: int = 100) -> str:
    """The format of the first `sample` records; ValueError when none can be told or they disagree."""
    seen: dict[str, int] = {}  # format -> first record that looks like it
    for i, record in enumerate(records[:sample]):
        fmt = _record_format(record)
        if fmt is not None:
            seen.setdefault(fmt, i)
    if len(seen) == 1:
        return next(iter(seen))
    if seen:
        looks = ", ".join(f"record {i} like {fmt}" for fmt, i in seen.items())
        raise ValueError(f"the records mix chat formats ({looks}); pass fmt= explicitly")
    first = records[0] if records else None
    keys = sorted(k for k, v in first.items() if v is not None) if isinstance(first, dict) else type(first).__name__
    raise ValueError(f"cannot tell the chat format from the keys of the first records (record 0: {keys}); "
                     f"pass fmt= one of {', '.join(FORMATS)}")


def parse_records(records: Sequence[Any], fmt: str = "auto", strict: bool = False, best_only: bool = False
                  ) -> tuple[list[Conversation], BadRecordReport]:
    """Conversations of the good records and a report of the skipped ones. With strict, the first bad record
    (lowest index) raises ValueError instead. best_only applies to oasst (see the module docstring)."""
    if fmt not in FORMATS + ("auto",):
        raise ValueError(f"unknown chat format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    report = BadRecordReport(total=len(records))
    if not records:
        return [], report
    explicit = fmt != "auto"
    if not explicit:
        fmt = detect_format(records)

    def reject(index: int, e: BadRecord) -> None:
        if strict:
            mismatch = _format_mismatch(records, fmt) if explicit else None
            raise ValueError(f"record {index}: {e.reason}: {e.detail}" + (f"; {mismatch}" if mismatch else ""))
        report.add(index, e.reason, e.detail)

    if fmt == "oasst":
        conversations, dropped, notes = _parse_oasst(records, best_only)
        for i in sorted(dropped):
            reject(i, dropped[i])
        for i in sorted(notes):
            report.note(i, notes[i])
        return _checked(conversations, report, records, fmt, explicit)

    parse = _RECORD_PARSERS[fmt]
    conversations = []
    for i, record in enumerate(records):
        try:
            turns = parse(record)
        except BadRecord as e:
            reject(i, e)
            continue
        if any(a[0] == b[0] == "user" for a, b in zip(turns, turns[1:])):
            report.note(i, "consecutive_user")
        conversations.append(Conversation(turns, i))
    return _checked(conversations, report, records, fmt, explicit)


def _format_mismatch(records: Sequence[Any], fmt: str) -> str | None:
    """What to say when records read as `fmt` look like another format; None when they do not."""
    try:
        looks = detect_format(records)
    except ValueError:  # no format, or several: nothing clear to suggest
        return None
    if looks == fmt:
        return None
    return f"the records look like the {looks} format, not {fmt} (use --format {looks} or auto)"


def _checked(conversations: list[Conversation], report: BadRecordReport, records: Sequence[Any], fmt: str,
             explicit: bool) -> tuple[list[Conversation], BadRecordReport]:
    """An explicit format that no record fits while they look like another one is a mistake in the format, not
    a file of bad records: say so instead of reporting every record as broken."""
    mismatch = _format_mismatch(records, fmt) if explicit and records and not conversations else None
    if mismatch:
        raise ValueError(f"none of the {len(records)} records is usable as {fmt}: {mismatch}")
    return conversations, report
