"""Write a small synthetic corpus in the bert format (one sentence a line, a blank line between
documents) for the quick start. Each document follows one character through related sentences,
so both masked-word prediction and next-sentence prediction have something to learn."""

import logging
import random

from uer.errors import run_cli
from uer.options import parse

logger = logging.getLogger(__name__)

NAMES = "anna ben carla dev emil fatima george hana ivan julia kofi lena marco nora omar pia".split()
PLACES = "garden harbour library market station museum kitchen forest village bridge".split()
THINGS = "apple letter lamp guitar kite basket ticket map candle hammer violin notebook".split()
COLORS = "red green blue yellow black white orange purple".split()
VERBS = [("finds", "found"), ("paints", "painted"), ("carries", "carried"), ("sells", "sold"),
         ("repairs", "repaired"), ("hides", "hid"), ("buys", "bought"), ("opens", "opened")]
WEATHER = "rain sun wind snow fog".split()


def document(rng: random.Random) -> list[str]:
    name, place, thing, color = rng.choice(NAMES), rng.choice(PLACES), rng.choice(THINGS), rng.choice(COLORS)
    verb, past = rng.choice(VERBS)
    friend = rng.choice([n for n in NAMES if n != name])
    lines = [
        f"in the morning {name} walks to the {place} .",
        f"there {name} {verb} a {color} {thing} .",
        f"the {thing} is {color} and very old .",
        f"{name} shows the {color} {thing} to {friend} .",
        f"{friend} says that the {thing} was {past} long ago .",
        f"outside the {place} the {rng.choice(WEATHER)} begins .",
        f"in the evening {name} goes home with the {thing} .",
    ]
    start = rng.randint(0, 2)
    return lines[start:start + rng.randint(3, 7 - start)]


def main(argv=None):
    args, _ = parse("make_demo_corpus", argv, __doc__)
    rng = random.Random(args.seed)
    with open(args.output_path, "w", encoding="utf-8") as f:
        for _ in range(args.documents):
            f.write("\n".join(document(rng)) + "\n\n")
    logger.info(f"Wrote {args.output_path}: {args.documents} documents.")


def cli(argv=None) -> int:
    """scripts/make_demo_corpus.py and the uer-make-demo-corpus console command."""
    return run_cli(main, argv)
