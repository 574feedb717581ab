"""List the audit trail: every admin change, who made it and how it ended (admin key).

    lorafleet audit                      # everything
    lorafleet audit --since 1h           # the last hour (s, m, h, d)
    lorafleet audit --since 2026-11-28T00:00:00Z --json
"""

from __future__ import annotations

import argparse
import datetime
import re

from lorafleet.clients.console import add_common_arguments, call, print_json, print_table, timestamp

HELP = "list recorded admin changes (who, what, on what, when, result)"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_of(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """A DURATION ago (30s, 15m, 2h, 7d) or an ISO 8601 TIMESTAMP (UTC without a zone);
    ValueError for anything else."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match:
        return now - datetime.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        stamp = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: give a duration (30s, 15m, 2h, 7d) or a "
                         "timestamp (2026-11-28T09:00:00Z)") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.timezone.utc)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `audit` options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples
    parser.add_argument("--since", metavar="DURATION|TIMESTAMP",
                        help="only entries after this: 30s, 15m, 2h, 7d ago, or an ISO 8601 "
                             "time (default: all)")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Prints the entries, oldest first."""
    try:
        since = since_of(args.since) if args.since else None
    except ValueError as error:
        raise SystemExit(f"lorafleet audit: error: {error}") from None

    def action(client) -> None:
        entries = client.list_audit_entries(since=since).entries
        if args.json:
            print_json(entries)
            return
        print_table(["TIME", "PRINCIPAL", "ACTION", "TARGET", "RESULT"],
                    [[timestamp(e.time), e.principal, e.action, e.target, e.result]
                     for e in entries])

    return call(args, action)
