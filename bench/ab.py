"""A/B of two smsrelay checkouts: the same end-to-end drain, interleaved, medians compared.

    .venv/bin/python -m bench.ab --b /tmp/benchcopy --scenarios 0:64,200:256 --repeats 5

`--a` defaults to this checkout. Each repeat runs A, B (and the bare loop with `--bare`) back
to back for each scenario, so background noise hits both alike; the median of each and B/A
are printed, with the workers' CPU per message.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import e2e
from bench.common import ROOT, FakeTwilioProcess, install_cleanup, median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--a", type=Path, default=ROOT, help="checkout A (default: this one)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B")
    parser.add_argument(
        "--scenarios", default="0:64", help="latency_ms:concurrency pairs, comma-separated"
    )
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bare", action="store_true", help="also run the bare loop")
    args = parser.parse_args()
    install_cleanup()
    scenarios = [(float(s.split(":")[0]), int(s.split(":")[1])) for s in args.scenarios.split(",")]
    roots = {"A": args.a.resolve(), "B": args.b.resolve()}
    rates: dict[tuple[str, float, int], list[float]] = {}
    cpus: dict[tuple[str, float, int], list[float]] = {}
    with FakeTwilioProcess() as fake:
        for rep in range(args.repeats):
            for lat, conc in scenarios:
                order = ["A", "B"] if rep % 2 == 0 else ["B", "A"]
                if args.bare:
                    order.append("bare")
                for who in order:
                    name = "bare" if who == "bare" else "smsrelay"
                    r = e2e.measure(
                        name, fake, args.messages, lat, conc, smsrelay_root=roots.get(who, ROOT)
                    )
                    key = (who, lat, conc)
                    if r.ok:
                        rates.setdefault(key, []).append(r.rate)
                        cpus.setdefault(key, []).append(r.cpu_us_per_msg)
                    print(
                        f"#{rep + 1} {who:4} {lat:g} ms/{conc}: {r.rate:7,.0f} msg/s "
                        f"{r.cpu_us_per_msg:5,.0f} µs/msg {r.error}",
                        flush=True,
                    )
    print()
    for lat, conc in scenarios:
        line = [f"{lat:g} ms/{conc}:"]
        for who in ("A", "B", "bare"):
            if (who, lat, conc) in rates:
                line.append(
                    f"{who} {median(rates[(who, lat, conc)]):,.0f} msg/s "
                    f"({median(cpus[(who, lat, conc)]):,.0f} µs/msg)"
                )
        a, b = rates.get(("A", lat, conc)), rates.get(("B", lat, conc))
        if a and b:
            line.append(f"B/A {median(b) / median(a):.2f}x")
        print("  ".join(line))


if __name__ == "__main__":
    main()
