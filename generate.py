"""Talk to a trained model, or watch it solve a puzzle.

    python generate.py --checkpoint checkpoints/<project>/<run> --prompt "What is 23 + 45?"
    python generate.py --checkpoint <run>                                # multi-turn chat (--interactive), /help
    python generate.py --checkpoint <run> --prompt "Tell a story." --temperature 0.8 --num-samples 3
    python generate.py --checkpoint <run> --input-file prompts.jsonl --output-file answers.jsonl
    python generate.py --checkpoint <run> --serve --port 8000           # OpenAI-compatible API + chat page (serve.py)
    python generate.py --checkpoint <sudoku run> --puzzle "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
    python generate.py --checkpoint <arc run> --arc-task task.json --fit-steps 200   # a task it never trained on
    python generate.py --checkpoint <sudoku run> --evaluate data/sudoku-hard --act-steps 16  # score test splits

Everything needed comes from the run: the weights (EMA when saved), the model config and the tokenizer.
--checkpoint takes a run directory, a step_<N>[.pt] file, <run>/latest, <run>/best (the best evaluation's),
<run>/final (where training ended), or a glob such as
checkpoints/<project>/trm_chat-*/step_1000 (the newest matching run directory is used).
Causal models generate with a KV cache (--no-cache recomputes the whole sequence for every token).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from constants import IGNORE_LABEL_ID
from dataset.puzzle_dataset import PuzzleDataset
from evaluators.arc import as_grid
from evaluators.arc_fit import FitSettings, puzzle_embedding, solve_task
from evaluators.puzzle import evaluate_puzzles
from tasks import task_module
from tasks.arc import parse_task, read_json
from utils.checkpoint import ALIASES, find_checkpoint, load_trained_model, named_checkpoint, run_steps
from utils.cli import exit_on_bad_input
from utils.device import resolve_dtype, select_device
from utils.files import atomic_write
from utils.sampling import (SamplingParams, act_steps, chat_stop_ids, check_sampling, context_length,
                            fit_conversation, generate_tokens, prompt_ids, stream_tokens)
from utils.tokenizer import ChatTokenizer

HELP = """commands:
  /temp X     sampling temperature (0 = greedy)      /topk N   keep the N most likely tokens (0 = off)
  /topp X     nucleus sampling threshold (1 = off)   /max N    answer length limit in tokens
  /system T   set the system prompt (empty clears)   /reset    forget the conversation
  /params     show the settings                      /help     this text
  /models     list this run's checkpoints            /model N  switch to step N (or best, final, latest)
  /quit       leave (Ctrl-D too); Ctrl-C stops the current answer"""


def sampling_option(name: str, kind: type) -> Callable[[str], float]:
    """An argparse type for a sampling setting: parsed, then checked against its rule (utils/sampling.py)."""
    def parse(text: str) -> float:
        try:
            return check_sampling(name, kind(text))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e) if "must be" in str(e) else f"not a number: {text!r}") from None
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a run directory (latest step), a step_<N>[.pt] file, "
                    "<run>/latest, <run>/best, <run>/final, or a glob pattern (the newest matching run directory)")
    mode = ap.add_mutually_exclusive_group()  # none given: --interactive (a puzzle run: says to pass --puzzle)
    mode.add_argument("--prompt", help="answer one message (chat runs) or continue the text (text runs)")
    mode.add_argument("--interactive", action="store_true", help="multi-turn chat in the terminal (the default)")
    mode.add_argument("--input-file", help="JSONL of {'prompt': ...} or {'messages': [...]}: one answer per line")
    mode.add_argument("--serve", action="store_true", help="serve the run over HTTP: an OpenAI-compatible API "
                      "(/v1/chat/completions, /v1/completions, /v1/models) and a chat page at / (see serve.py)")
    mode.add_argument("--puzzle", help="a puzzle or a file holding one: Sudoku, 81 characters ('.' or '0' blank); "
                      "maze, n lines of n as in the run's data, 30x30 by default ('#' wall, ' ' open, 'S' start, "
                      "'G' goal)")
    mode.add_argument("--evaluate", nargs="+", metavar="DATASET", help="puzzle runs: score the test split of each "
                      "dataset directory (exact accuracy after every ACT step, where the halting head stops)")
    ap.add_argument("--act-steps", type=int, help="puzzle runs (--puzzle, --evaluate): run this many ACT steps "
                    "instead of the run's halt_max_steps (test-time recursion)")
    ap.add_argument("--host", default="127.0.0.1", help="with --serve: the address to listen on")
    ap.add_argument("--port", type=int, default=8000, help="with --serve: the port (0: a free one, printed)")
    mode.add_argument("--arc-task", help="an ARC task file ('train' pairs, 'test' inputs, outputs optional) the run "
                      "never trained on: fit new puzzle-embedding rows on its demonstrations, then answer (top 2)")
    ap.add_argument("--output-file", help="with --input-file: where the answers go (JSONL, same order); with "
                    "--evaluate: the scores (JSON)")
    ap.add_argument("--fit-steps", type=int, default=100, help="--arc-task: sign-SGD steps fitting the new rows")
    ap.add_argument("--fit-lr", type=float, help="--arc-task: their learning rate (default: the run's puzzle_emb_lr)")
    ap.add_argument("--num-aug", type=int, help="--arc-task: augmented copies (default: the run's dataset.build.num_aug)")
    ap.add_argument("--system", default="", help="system prompt")
    ap.add_argument("--max-new-tokens", "--max-tokens", "--max", dest="max_new_tokens",
                    type=sampling_option("max_new_tokens", int), default=256)
    ap.add_argument("--temperature", "--temp", dest="temperature", type=sampling_option("temperature", float),
                    default=0.0, help="0 = greedy")
    ap.add_argument("--top-k", "--topk", dest="top_k", type=sampling_option("top_k", int), default=0)
    ap.add_argument("--top-p", "--topp", dest="top_p", type=sampling_option("top_p", float), default=1.0)
    ap.add_argument("--repetition-penalty", type=sampling_option("repetition_penalty", float), default=1.0)
    ap.add_argument("--seed", type=sampling_option("seed", int), default=0)
    ap.add_argument("--num-samples", type=int, default=1, help="with --prompt or --input-file: N answers per prompt, "
                    "sample i drawn with seed + i (needs --temperature > 0)")
    ap.add_argument("--batch-size", type=int, help="prompts generated together with --input-file (default 8); "
                    "examples per fitting step and prediction batch with --arc-task (default 64)")
    ap.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "float64"],
                    help="forward dtype (auto: bfloat16 on CUDA, else float32)")
    ap.add_argument("--tokenizer", help="tokenizer directory (default: the one saved with the run)")
    ap.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights are saved")
    ap.add_argument("--no-cache", action="store_true", help="recompute the whole sequence for every token")
    ap.add_argument("--compile", action="store_true",
                    help="compile the decoding step (torch.compile, static cache): faster tokens after a compile of "
                         "about a minute on a CPU, for long generations and many prompts")
    args = ap.parse_args(argv)
    if args.compile and args.no_cache:
        ap.error("--compile compiles the cached decoding step; it does not go with --no-cache")
    if args.output_file and not (args.input_file or args.evaluate):
        ap.error("--output-file goes with --input-file or --evaluate")
    if args.act_steps is not None and (args.act_steps < 1 or not (args.puzzle or args.evaluate)):
        ap.error("--act-steps must be at least 1 and goes with --puzzle or --evaluate")
    if args.input_file and not args.output_file:
        ap.error("--input-file needs --output-file")
    if args.num_samples < 1:
        ap.error("--num-samples must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        ap.error("--batch-size must be at least 1")
    if not 0 <= args.port <= 65535:
        ap.error(f"--port must be in 0..65535 (0: a free one), got {args.port}")
    if args.output_file and os.path.isdir(args.output_file):
        ap.error(f"--output-file {args.output_file}: a directory, not a file name")
    if args.output_file and not os.path.isdir(os.path.dirname(os.path.abspath(args.output_file))):
        ap.error(f"--output-file {args.output_file}: the directory {os.path.dirname(args.output_file)} does not exist")
    if args.num_samples > 1 and args.prompt is None and args.input_file is None:
        ap.error("--num-samples goes with --prompt or --input-file")
    if args.num_samples > 1 and args.temperature <= 0:
        ap.error(f"--num-samples {args.num_samples} with greedy decoding (--temperature 0) would give "
                 f"{args.num_samples} identical answers; set --temperature above 0")
    return args


def load_model(args: argparse.Namespace):
    """(model in eval mode, checkpoint, device) for --checkpoint, --device, --dtype and --no-ema."""
    device = select_device(args.device, "--device")
    model, checkpoint = load_trained_model(args.checkpoint, device, use_ema=not args.no_ema,
                                           dtype=resolve_dtype(args.dtype, device))
    if getattr(args, "act_steps", None):
        model.config.halt_max_steps = args.act_steps
    return model, checkpoint, device


class Generator:
    """A loaded run: model, tokenizer and the sampling settings, with the three text modes."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.file = find_checkpoint(args.checkpoint)
        self.run_dir = os.path.dirname(self.file) or "."
        self.model, self.checkpoint, _ = load_model(args)
        self.params = SamplingParams(args.temperature, args.top_k, args.top_p, args.repetition_penalty,
                                     args.max_new_tokens, args.seed)
        self.use_cache, self.compiled = not args.no_cache, args.compile
        self.system = args.system
        self.batch_size = args.batch_size or 8
        dataset = (self.checkpoint.get("config") or {}).get("dataset", {})
        self.text_mode = (dataset.get("prompt_mode") or ("text" if dataset.get("name") == "text" else "chat")) == "text"
        self.tokenizer = self._load_tokenizer(args.tokenizer)

    def _load_tokenizer(self, given: str | None) -> ChatTokenizer:
        path = given or saved_tokenizer(self.file)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--tokenizer {path}: not a tokenizer directory saved by training" if given else
                                    f"{path}: no tokenizer saved with this run (a puzzle run? use --puzzle)")
        tokenizer = ChatTokenizer.load(path)
        vocab = self.model.config.vocab_size
        if len(tokenizer) > vocab:
            raise ValueError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the checkpoint's model has a "
                             f"vocabulary of {vocab}")
        return tokenizer

    def stop_ids(self) -> set[int]:
        return {self.tokenizer.eot_id} if self.text_mode else chat_stop_ids(self.tokenizer)

    def encode_prompt(self, turns: list[tuple[str, str]]) -> list[int]:
        """Token prompt for a conversation (text runs: the last message as raw text), trimmed to the context."""
        if not turns[-1][1].strip():
            raise ValueError("empty prompt")
        context = context_length(self.model)
        if self.text_mode:
            ids, _ = prompt_ids(self.tokenizer, turns[-1][1], "text")
            if len(ids) >= context:
                raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is {context} tokens")
            return ids
        ids, dropped = fit_conversation(self.tokenizer, turns, context, self.params.max_new_tokens)
        if dropped:
            print(f"[dropped the {dropped} oldest turn(s) to fit the {context}-token context]", file=sys.stderr)
        return ids

    def stream(self, turns: list[tuple[str, str]], seed_offset: int = 0) -> str:
        """Print the answer as it is generated; return it. Ctrl-C stops it early."""
        ids = self.encode_prompt(turns)
        params = dataclasses.replace(self.params, seed=self.params.seed + seed_offset)
        tokens: list[int] = []
        shown = ""
        stopped = False
        try:
            for (token,) in stream_tokens(self.model, [ids], params, self.stop_ids(), self.use_cache,
                                           compiled=self.compiled):
                if token is None:
                    stopped = True
                    break
                tokens.append(token)
                text = self.tokenizer.decode(tokens)
                if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                    print(text[len(shown):], end="", flush=True)
                    shown = text
        except KeyboardInterrupt:
            print(" [stopped]", end="")
        print(self.tokenizer.decode(tokens)[len(shown):], flush=True)  # anything held back
        context = context_length(self.model)
        if not stopped and len(ids) + len(tokens) == context:
            print(f"[the answer reached the end of the {context}-token context]", file=sys.stderr)
        return self.tokenizer.decode(tokens)

    def conversation(self, *turns: tuple[str, str]) -> list[tuple[str, str]]:
        return ([("system", self.system)] if self.system and not self.text_mode else []) + list(turns)

    def interactive(self, read=input) -> None:
        if sys.stdin.isatty():
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
        history: list[tuple[str, str]] = []
        print(f"chat with {self.run_dir} ({'text completion' if self.text_mode else 'chat'}); /help for commands")
        while True:
            try:
                line = read("you> ").strip()
            except EOFError:
                print()
                return
            except KeyboardInterrupt:
                print("\n(/quit to leave)")
                continue
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line, history) == "quit":
                    return
                continue
            print("model> ", end="", flush=True)
            turns = self.conversation(*history, ("user", line))
            try:
                reply = self.stream(turns, seed_offset=len(history))
            except ValueError as e:  # the message alone does not fit: say so and keep the conversation
                print(f"error: {e}")
                continue
            history += [("user", line), ("assistant", reply)]

    def command(self, line: str, history: list) -> str | None:
        name, _, value = line.partition(" ")
        value = value.strip()
        settings = {"/temp": ("temperature", float), "/topk": ("top_k", int), "/topp": ("top_p", float),
                    "/max": ("max_new_tokens", int)}
        if name in ("/quit", "/exit"):
            return "quit"
        if name in settings:
            field, kind = settings[name]
            try:
                number = kind(value)
            except ValueError:
                print(f"{name} needs a number, e.g. {name} {kind(1)}")
                return None
            try:
                setattr(self.params, field, check_sampling(field, number))
            except ValueError as e:
                print(f"error: {e}; unchanged")
                return None
            print(f"{field} = {getattr(self.params, field)}")
        elif name == "/system":
            self.system = value
            print(f"system prompt: {value!r}" if value else "system prompt cleared")
        elif name == "/reset":
            history.clear()
            print("conversation cleared")
        elif name == "/params":
            print(", ".join(f"{k} = {v}" for k, v in vars(self.params).items()) + f", system = {self.system!r}")
        elif name == "/models":
            names = {alias: named_checkpoint(self.run_dir, alias) for alias in ALIASES}
            for _, file in run_steps(self.run_dir):
                notes = [alias for alias, named in names.items() if named and os.path.samefile(named, file)]
                notes += ["loaded"] if os.path.samefile(file, self.file) else []
                print(os.path.basename(file) + (f"  ({', '.join(notes)})" if notes else ""))
        elif name == "/model":
            self.switch_model(value)
        elif name == "/help":
            print(HELP)
        else:
            print(f"unknown command {name}; /help lists them")
        return None

    def switch_model(self, name: str) -> None:
        """Load another checkpoint of this run: a step number, a file name in the run directory, latest, best or
        final."""
        if not name or os.sep in name:
            print("/model needs a step number or a checkpoint file name of this run (/models lists them)")
            return
        try:
            file = find_checkpoint(os.path.join(self.run_dir, f"step_{name}" if name.isdigit() else name))
            args = argparse.Namespace(**{**vars(self.args), "checkpoint": file})
            self.model, self.checkpoint, _ = load_model(args)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}")
            return
        self.file = file
        print(f"loaded {file} (step {self.checkpoint.get('step', '?')}); the conversation goes on, /reset clears it")

    def answer_file(self, input_file: str, output_file: str, num_samples: int = 1) -> None:
        """One answer per input line (`response`), or `num_samples` of them (`responses`, sample i drawn with
        seed + i), in order, generated in batches; written atomically."""
        records = read_prompts(input_file)
        prompts = []
        for where, record, turns in records:
            try:
                prompts.append(self.encode_prompt(self.conversation(*turns)))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        samples = []  # [sample][prompt] -> tokens
        with tqdm(total=len(prompts) * num_samples, desc="generating", file=sys.stderr) as bar:
            for i in range(num_samples):
                params = dataclasses.replace(self.params, seed=self.params.seed + i)
                samples.append(generate_tokens(self.model, prompts, params, self.stop_ids(), self.use_cache,
                                               self.batch_size, progress=bar.update, compiled=self.compiled))
        lines = []
        for (_, record, _), answers in zip(records, zip(*samples)):
            texts = [self.tokenizer.decode(answer) for answer in answers]
            answer = {"response": texts[0]} if num_samples == 1 else {"responses": texts}
            lines.append(json.dumps({**record, **answer}, ensure_ascii=False))
        atomic_write(Path(output_file), lambda f: f.write("".join(f"{line}\n" for line in lines).encode()))
        print(f"{len(lines)} answers written to {output_file}")


def saved_tokenizer(checkpoint_file: str) -> str:
    """Where a run keeps its tokenizer (puzzle runs have none)."""
    return os.path.join(os.path.dirname(checkpoint_file) or ".", "tokenizer")


def read_prompts(path: str) -> list[tuple[str, dict, list[tuple[str, str]]]]:
    """(file:line, record, turns) for each line: {"prompt": str, "system"?: str} or {"messages": [{role, content}]}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such prompts file")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if isinstance(record, dict) and isinstance(record.get("prompt"), str):
                turns = ([("system", record["system"])] if record.get("system") else []) + [("user", record["prompt"])]
            elif isinstance(record, dict) and isinstance(record.get("messages"), list) and record["messages"]:
                try:
                    turns = [(m["role"], m["content"]) for m in record["messages"]]
                except (KeyError, TypeError):
                    raise ValueError(f"{where}: every message needs 'role' and 'content'") from None
            else:
                raise ValueError(f"{where}: expected an object with a 'prompt' string or a 'messages' list")
            records.append((where, record, turns))
    if not records:
        raise ValueError(f"{path}: no prompts")
    return records


# ---------------------------------------------------------------- puzzles

# dataset facts (seq_len, vocab_size) -> task, for runs saved before the config recorded dataset.task
TASK_OF_SHAPE = {(81, 11): "sudoku", (900, 6): "maze", (900, 12): "arc"}


def run_task(checkpoint: dict, seq_len: int, vocab_size: int) -> str | None:
    """The task a puzzle run was trained on: its config's dataset.task; for older runs, the builder or evaluator
    its config names, or the shape of its data."""
    dataset = (checkpoint.get("config") or {}).get("dataset") or {}
    if dataset.get("task"):
        return dataset["task"]
    if (dataset.get("build") or {}).get("builder"):
        return dataset["build"]["builder"]
    return "arc" if dataset.get("evaluator") == "arc" else TASK_OF_SHAPE.get((seq_len, vocab_size))


def solve_puzzle(model, checkpoint: dict, text: str, device: torch.device) -> bool:
    """Run every ACT step on one puzzle, printing the predicted grid, the halting confidence and the cells that
    changed; return whether the last grid is a valid solution."""
    config = model.config
    task = run_task(checkpoint, config.seq_len, config.vocab_size)
    if task is None:
        raise ValueError(f"this checkpoint's model reads {config.seq_len} tokens of a {config.vocab_size}-token "
                         "vocabulary: not a Sudoku or maze model")
    kind = task_module(task).TEXT
    if kind is None:
        raise ValueError(f"this run's task is {task}: --puzzle solves Sudoku and maze puzzles only")
    kind = kind.for_seq_len(config.seq_len)
    puzzle = kind.read(text)
    inputs = torch.tensor([puzzle], device=device)
    batch = {"inputs": inputs, "labels": torch.full_like(inputs, IGNORE_LABEL_ID),
             "puzzle_identifiers": torch.zeros(1, dtype=torch.long, device=device)}
    print(f"{kind.name}:\n{kind.show(puzzle)}\n")
    previous, halted_at = puzzle, None
    with torch.no_grad():
        for step, (_, outputs) in enumerate(act_steps(model, batch), start=1):
            tokens = outputs["preds"][0].tolist()
            confidence = torch.sigmoid(outputs["q_halt_logits"][0].float()).item()
            changed = sum(a != b for a, b in zip(kind.cells(tokens), kind.cells(previous)))
            if halted_at is None and confidence > 0.5:
                halted_at = step
            note = " (the model would stop here)" if halted_at == step else ""
            print(f"ACT step {step}: halting confidence {confidence:.3f}, {changed} cells changed{note}\n"
                  f"{kind.show(tokens)}\n")
            previous = tokens
    solved = kind.check(puzzle, previous)
    print("valid solution" if solved else "not a valid solution")
    return solved


def evaluate_datasets(model, paths: list[str], device: torch.device, batch_size: int) -> dict[str, dict[str, float]]:
    """The puzzle evaluation (evaluators/puzzle.py) of the test split of each dataset directory."""
    results = {}
    for path in paths:
        data = PuzzleDataset([path], "test", global_batch_size=batch_size)
        fields, config = data.model_fields(), model.config
        if (fields["seq_len"], fields["vocab_size"]) != (config.seq_len, config.vocab_size) or \
                fields["num_puzzle_identifiers"] > config.num_puzzle_identifiers:
            raise ValueError(f"{path}: its puzzles ({fields}) do not fit this model (seq_len {config.seq_len}, "
                             f"vocab_size {config.vocab_size}, {config.num_puzzle_identifiers} puzzle identifiers)")
        results[path] = evaluate_puzzles(model, data, device)
        r = results[path]
        per_step = " ".join(f"{r[f'exact_accuracy@step{k}']:.3f}" for k in range(1, config.halt_max_steps + 1))
        print(f"{path}: {int(r['count'])} puzzles, exact accuracy {r['exact_accuracy']:.4f} (token "
              f"{r['accuracy']:.4f}) after {config.halt_max_steps} ACT steps; by step: {per_step}; the halting head "
              f"stops at step {r['halt_step']:.2f} on average, exact accuracy there {r['halt_exact_accuracy']:.4f}")
    return results


def show_grid(grid) -> str:
    return "\n".join("".join(str(v) for v in row) for row in grid)


def solve_arc_task(model, checkpoint: dict, path: str, args: argparse.Namespace, device: torch.device) -> bool | None:
    """Fit new puzzle-embedding rows for an unseen ARC task, print the top-2 answers of every test input and
    whether they are right (when the task gives its outputs). Returns whether every test input was solved
    within two attempts (None: no outputs to check)."""
    config = model.config
    task_name = run_task(checkpoint, config.seq_len, config.vocab_size)
    if task_name != "arc":
        raise ValueError(f"this run's task is {task_name or 'not a puzzle task'}: --arc-task needs a run trained on "
                         "ARC (Sudoku and maze runs share one puzzle identifier and need no fitting: use --puzzle)")
    task = parse_task(Path(path).stem, "task", read_json(Path(path)), source=path)
    settings = FitSettings.from_run(checkpoint, steps=args.fit_steps, lr=args.fit_lr, num_aug=args.num_aug,
                                    batch_size=args.batch_size, seed=args.seed)
    if puzzle_embedding(model) is None:
        print("this run has no puzzle embedding (arch.puzzle_emb_ndim=0): nothing to fit", file=sys.stderr)
    with tqdm(total=settings.steps if puzzle_embedding(model) else 0, desc="fitting the task's rows",
              file=sys.stderr) as bar:
        def progress(loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        answer = solve_task(model, task, settings, device, progress)
    print(f"task {task.id}: {len(task.train)} demonstrations, {settings.num_aug} augmentations, {settings.steps} "
          f"fitting steps (lr {settings.lr:g})")
    solved = []
    for i, (pair, candidates) in enumerate(zip(task.test, answer.candidates)):
        for k, grid in enumerate(candidates[:2], start=1):
            print(f"test {i}, attempt {k}:\n{show_grid(grid)}")
        if not candidates:
            print(f"test {i}: no well-formed grid predicted")
        if pair.output is not None:
            hit = next((k for k, g in enumerate(candidates[:2], start=1) if g == as_grid(pair.output)), None)
            solved.append(hit is not None)
            print(f"test {i}: {'correct (attempt %d)' % hit if hit else 'wrong'}")
    return all(solved) if solved else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with exit_on_bad_input():
        args.checkpoint = find_checkpoint(args.checkpoint)  # once: a glob's choice is reported once
        if args.arc_task is not None:
            model, checkpoint, device = load_model(args)
            solve_arc_task(model, checkpoint, args.arc_task, args, device)
            return 0
        if args.puzzle is None and args.prompt is None and args.input_file is None and not args.evaluate:  # chat, serve
            if not args.tokenizer and not os.path.isdir(saved_tokenizer(args.checkpoint)):
                raise ValueError(f"{args.checkpoint}: a puzzle model (no tokenizer in its run): "
                                 f"{'--serve serves chat and text runs; ' if args.serve else ''}pass --puzzle with "
                                 "a puzzle or a file holding one")
            args.interactive = not args.serve
        if args.puzzle is not None:
            model, checkpoint, device = load_model(args)
            solve_puzzle(model, checkpoint, args.puzzle, device)
            return 0
        if args.evaluate:
            model, _, device = load_model(args)
            results = evaluate_datasets(model, args.evaluate, device, args.batch_size or 256)
            if args.output_file:
                atomic_write(Path(args.output_file), lambda f: f.write(json.dumps(results, indent=1).encode()))
            return 0
        if args.serve:  # before loading the model
            try:
                from serve import serve
            except ImportError as e:
                raise ValueError(f"--serve needs fastapi and uvicorn ({e}): pip install -r requirements.txt") from None
        generator = Generator(args)
        if args.prompt is not None:
            for i in range(args.num_samples):
                if args.num_samples > 1:
                    print(f"--- sample {i + 1}/{args.num_samples} (seed {args.seed + i}) ---", flush=True)
                generator.stream(generator.conversation(("user", args.prompt)), seed_offset=i)
        elif args.serve:
            serve(generator, args.host, args.port)
        elif args.interactive:
            generator.interactive()
        else:
            generator.answer_file(args.input_file, args.output_file, args.num_samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
