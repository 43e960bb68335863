"""Server load: the same questions asked by one client in turn, then by many clients at once, against
`generate.py --serve` on a run (started here on a free 127.0.0.1 port). Greedy, so every answer must be the
same both ways; prints the requests, seconds and answer tokens/s of each.

    python benchmarks/serve_load.py checkpoints/Chat-synthetic-ACT-torch/<run> [--clients 16] [--requests 64]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["Hello!", "What is 12 + 30?", "What is 7 + 8?", "What is the capital of France?", "Thank you!",
             "What is 21 + 14?", "Who are you?", "What is 3 + 44?"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a chat run directory")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64, help="asked by the clients together")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    if min(args.clients, args.requests, args.max_tokens) < 1:
        ap.error("--clients, --requests and --max-tokens must be >= 1")
    server = subprocess.Popen([sys.executable, "generate.py", "--checkpoint", args.run, "--serve", "--port", "0"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        found = re.search(r"at (http://[\d.:]+):", line)
        if not found:
            print(f"error: the server did not start: {line.strip() or 'see its error above'}", file=sys.stderr)
            return 1
        client = OpenAI(base_url=f"{found.group(1)}/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[-1].id

        def ask(i: int) -> tuple[str, int]:
            reply = client.chat.completions.create(model=model, temperature=0, max_tokens=args.max_tokens,
                                                   messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
            return reply.choices[0].message.content, reply.usage.completion_tokens

        ask(0)  # warm up
        start = time.perf_counter()
        alone = [ask(i) for i in range(len(QUESTIONS))]
        one = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            together = list(pool.map(ask, range(args.requests)))
        many = time.perf_counter() - start
        same = all(answer == alone[i % len(QUESTIONS)] for i, answer in enumerate(together))
        print(f"1 client: {len(alone)} requests in {one:.2f} s, {sum(n for _, n in alone) / one:.0f} answer tokens/s")
        print(f"{args.clients} clients: {args.requests} requests in {many:.2f} s, "
              f"{sum(n for _, n in together) / many:.0f} answer tokens/s; the same answers: {same}")
        return 0 if same else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
