"""`ganeti-lab bench`: the benchmark document (JSON) and its Markdown summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lab.errors import LabError


def cmd_bench(args: argparse.Namespace) -> int:
    from lab.bench import reference, run_bench
    from lab.bench.summary import markdown

    if args.summarize:  # a saved document as the README's Markdown table; nothing is run
        try:
            saved = json.loads(Path(args.summarize).read_text())
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read the benchmark document {args.summarize}: {exc}",
                           "pass the file written by `ganeti-lab bench --output FILE`") from exc
        if args.against:
            saved["against"] = reference.compare(saved, reference.load(Path(args.against)),
                                                 args.against)
        sys.stdout.write(markdown(saved))
        return 0
    document = run_bench(args)
    text = json.dumps(document, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stderr.write(markdown(document))  # stdout is the JSON document alone
    if document.get("interrupted"):  # what was measured is out; the exit says it is partial
        return 130
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser("bench", help="benchmark: image build, bring-up, reset, baseline; JSON")
    sp.add_argument("--output", help="also write the JSON document to this file")
    sp.add_argument("--smallest", action="store_true",
                    help="smoke settings: tiny lab only, no scaling, no baseline")
    sp.add_argument("--skip-cold-build", action="store_true",
                    help="do not rebuild images from a cold cache")
    sp.add_argument("--skip-lab", action="store_true",
                    help="leave out the default lab's figures (cold start, bootstrap, resets, "
                         "cache), e.g. to run the baseline alone")
    sp.add_argument("--skip-baseline", action="store_true")
    sp.add_argument("--skip-scaling", action="store_true")
    sp.add_argument("--against", metavar="FILE",
                    help="compare with this earlier benchmark document (default: the newest "
                         "docs/bench-*.json of the checkout)")
    sp.add_argument("--summarize", metavar="FILE",
                    help="print a saved document as a Markdown table of figures; run nothing")
    sp.set_defaults(fn=cmd_bench)
