"""Personal-data scan: throughput (MB/s) on several kinds of text, and the corpus rates.

    python bench/pii.py [--repeat 3] [--rounds 40]

Prints MB/s of `common.pii.scan` on 1 MiB texts (Portuguese prose, number-heavy logs,
text full of PII, text with full-width digits and zero-width characters, hostile digit
runs), of a whole request body through `common.pii_payload.screen` with redaction, of a
streamed answer through `common.pii_stream.StreamFilter` (4 characters a chunk), and the
detection and false-positive rates on the generated corpus (`bench/pii_corpus.py`).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pii_corpus import corpus, measure
from common import pii
from common.pii_payload import screen
from common.pii_stream import StreamFilter

MIB = 1 << 20

PROSE = (
    "Olá! Preciso revisar o contrato do cliente, com saldo de R$ 12.345,67 em 36 parcelas "
    "a partir de 05/08/2025; a taxa é de 1,99% a.m. e o atendimento é às 14:30. Explique "
    "as condições, a carência e o seguro prestamista em até três parágrafos, por favor. "
)
LOGS = "2025-07-27 14:30:59,123 INFO [worker-3] request 8f2a done in 123 ms status=200 id=987654\n"
PII = (
    "Cliente CPF 529.982.247-25, CNPJ 11.222.333/0001-81, tel (11) 91234-5678, "
    "e-mail ana@example.com, cartão 4111 1111 1111 1111, CEP 01310-100. "
)
EVASIVE = "CPF ５２９.９８２.２４７-２５ e 529\u200b982\u200b247\u00ad25, ana＠example.com; "


def _text(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _rate(label: str, text: str, repeat: int) -> None:
    started = time.perf_counter()
    for _ in range(repeat):
        findings = pii.scan(text)
    elapsed = (time.perf_counter() - started) / repeat
    mb = len(text.encode()) / 1e6
    rate = f"{mb / elapsed:8.1f} MB/s  {elapsed * 1000:8.1f} ms/MiB"
    print(f"{label:<28} {rate}  findings {len(findings)}")


def _stream_rate(answer: str, size: int) -> None:
    """A streamed answer through the redacting filter, `size` characters per chunk."""
    guard = StreamFilter("redact")
    head = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    events = [
        head
        + b'"choices":[{"index":0,"delta":{"content":'
        + orjson.dumps(answer[i : i + size])
        + b'},"finish_reason":null}]}\n\n'
        for i in range(0, len(answer), size)
    ]
    started = time.perf_counter()
    for event in events:
        guard.feed(event)
    guard.feed(b"data: [DONE]\n\n")
    elapsed = time.perf_counter() - started
    per_chunk = elapsed / len(events) * 1e6
    print(
        f"{'stream, redacted':<28} {len(answer) / 1e6 / elapsed:8.1f} MB/s  "
        f"{per_chunk:8.1f} us/chunk of {size} characters"
    )


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="scans per text")
    parser.add_argument("--rounds", type=int, default=40, help="corpus rounds")
    args = parser.parse_args()
    rng = random.Random(1)
    digits = "".join(rng.choice("0123456789 ") for _ in range(MIB))
    texts = {
        "prose (pt-BR)": _text(PROSE, MIB),
        "logs (numbers)": _text(LOGS, MIB),
        "dense PII": _text(PII, MIB),
        "evasive writings": _text(EVASIVE, MIB),
        "random digits and spaces": digits,
    }
    print("scan throughput, 1 MiB each (one thread):")
    for label, text in texts.items():
        _rate(label, text, args.repeat)
    body = {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": _text(PROSE + PII, MIB)}],
        "user": "ana@example.com",
    }
    started = time.perf_counter()
    result = screen(body, redact=True)
    elapsed = time.perf_counter() - started
    rate = f"{MIB / 1e6 / elapsed:8.1f} MB/s"
    print(f"{'request body, redacted':<28} {rate}  kinds {sorted(result.kinds)}")

    _stream_rate(_text(PROSE + PII, 100_000), 4)

    cases = corpus(rounds=args.rounds)
    rates = measure(cases)
    print(f"\ncorpus: {len(cases)} written values (seed 14, {args.rounds} rounds)")
    head = f"{'detected':>14} {'rate':>8} {'false pos.':>14} {'rate':>8} {'other kind':>11}"
    print(f"{'kind':<12} {head}")
    for kind, r in rates.items():
        print(
            f"{kind:<12} {r.detected:>6}/{r.valid:<7} {r.detection:8.2%} "
            f"{r.false_positives:>6}/{r.invalid:<7} {r.false_positive:8.2%} "
            f"{r.other_kind_rate:10.2%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
