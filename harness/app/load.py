"""`python -m harness.app.load`: simulated users against a running app, through its HTTP endpoints.

    python app.py &                                             # the page, on 127.0.0.1:7860
    python -m harness.app.load --users 20 --seconds 60          # 20 users for 60 s

Each user is a `gradio_client` session on this machine's loopback that sends side-by-side requests with texts
of its own (distinct from every other user's) to each chosen column, one after the other, and checks every
reply against the variant's own answer for that text (`--check`: the same request sent alone afterwards).
Reports errors, mismatches, p50 / p95 latency and throughput. Bounded: at most 50 users and 600 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np

OPENINGS = ("A", "The", "This", "Honestly, the", "Frankly, this")
VERDICTS = ("wonderful", "dreadful", "moving", "boring", "clever", "clumsy", "charming", "tedious")
THINGS = ("film", "story", "cast", "ending", "soundtrack", "script")


def user_text(user: int, request: int) -> str:
    """A review no other (user, request) gets."""
    return (f"{OPENINGS[request % len(OPENINGS)]} {THINGS[(user + request) % len(THINGS)]} was "
            f"{VERDICTS[(user * 7 + request) % len(VERDICTS)]} (review {user}-{request}).")


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of the side-by-side page: its endpoint and variant."""

    endpoint: str  # "/answer_1"
    base: str
    variant: str
    task: str = "sentiment-en"
    language: str = "en"


@dataclasses.dataclass
class Report:
    requests: int
    errors: list[str]
    mismatches: list[str]
    latencies: list[float]
    seconds: float

    def summary(self) -> str:
        p50, p95 = (np.percentile(self.latencies, [50, 95]) if self.latencies else (float("nan"),) * 2)
        return (f"{self.requests} requests in {self.seconds:.0f} s ({self.requests / max(self.seconds, 1e-9):.2f}/s): "
                f"{len(self.errors)} errors, {len(self.mismatches)} mismatches, latency p50 {p50:.2f} s, "
                f"p95 {p95:.2f} s")


def _ask(client, column: Column, text: str):
    _, label, tag, _ = client.predict(column.base, column.task, column.language, column.variant, text, [],
                                      api_name=column.endpoint)
    shown = {c["label"]: round(c["confidence"], 6) for c in (label or {}).get("confidences", [])}
    if not shown:  # the page answered with a notice instead of a label
        raise RuntimeError(f"no answer from {column.variant}: {tag}")
    return shown


def run_load(url: str, columns: Sequence[Column], users: int, seconds: float, check: bool = True) -> Report:
    """`users` sessions sending requests to `columns` in turn for `seconds`; then (`check`) every answer is
    compared with the same request sent alone."""
    from gradio_client import Client

    users, seconds = min(users, 50), min(seconds, 600)
    answers: list[tuple[Column, str, dict]] = []
    report = Report(0, [], [], [], 0.0)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def user(index: int) -> None:
        client = Client(url, verbose=False)
        request = 0
        while time.monotonic() < deadline:
            column = columns[request % len(columns)]
            text = user_text(index, request)
            started = time.perf_counter()
            try:
                shown = _ask(client, column, text)
            except Exception as error:  # noqa: BLE001 - a load test counts every failure, whatever it is
                with lock:
                    report.errors.append(f"user {index}: {type(error).__name__}: {error}")
            else:
                with lock:
                    report.latencies.append(time.perf_counter() - started)
                    answers.append((column, text, shown))
            request += 1

    started = time.monotonic()
    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 600)
    report.seconds = time.monotonic() - started
    report.requests = len(report.latencies) + len(report.errors)
    if check:
        client = Client(url, verbose=False)
        for column, text, shown in answers:
            alone = _ask(client, column, text)
            if alone.keys() != shown.keys() or any(abs(alone[k] - shown[k]) > 1e-6 for k in alone):
                report.mismatches.append(f"{column.variant} on {text!r}: {shown} under load, {alone} alone")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.app.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--column", action="append", metavar="BASE:VARIANT",
                        help="a column to load (repeatable); default: minilm-l6 zero-shot, the first minilm-l6 run "
                             "given by --run, smollm2-135m-instruct zero-shot")
    parser.add_argument("--run", default="LoRA r8 · lora", help="the LoRA run's variant name on the page")
    args = parser.parse_args(argv)
    specs = args.column or ["minilm-l6:zero-shot", f"minilm-l6:{args.run}", "smollm2-135m-instruct:zero-shot"]
    columns = [Column(f"/answer_{i % 4 + 1}", *spec.split(":", 1)) for i, spec in enumerate(specs)]
    report = run_load(args.url, columns, args.users, args.seconds)
    print(report.summary())
    for line in (report.errors + report.mismatches)[:10]:
        print("  " + line)
    return 0 if not report.errors and not report.mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
