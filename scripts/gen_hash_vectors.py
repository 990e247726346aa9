"""Write tests/data/hash_vectors.json: golden buckets that pin the bucketing contract across languages.

Usage: python scripts/gen_hash_vectors.py          rewrite the file
       python scripts/gen_hash_vectors.py --check  exit 1 if the file differs from what this would write

The file is a plain JSON list of {"salt", "unit_id", "bucket"} objects, ASCII-escaped so that no editor
or tool can silently re-normalise the Unicode ids (NFC and NFD spellings are deliberately both here).
The formula is in the docstring of src/mabrouter/core/hashing.py. Changing an existing vector means
changing the contract, which reshuffles every running rollout: do it only on purpose.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from pathlib import Path

from mabrouter.core.hashing import bucket_of

OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "hash_vectors.json"

CAFE = "caf\u00e9"  # precomposed e-acute (NFC)

CASES: list[tuple[str, str]] = [
    # Plain ids under one salt.
    ("ranker", "user-1"),
    ("ranker", "user-2"),
    ("ranker", "user-3"),
    ("ranker", "user-1000000"),
    ("ranker", "a"),
    ("ranker", "x"),
    ("ranker", " leading-space"),
    ("ranker", "tab\tinside"),
    ("ranker", "9f1c3a2e-5b7d-4e0a-8c6f-2d1b0e9a7c55"),
    # Salts that differ only by case must give unrelated buckets.
    ("checkout", "user-42"),
    ("Checkout", "user-42"),
    ("CHECKOUT", "user-42"),
    # Digits-only ids, including leading zeros (a string, not a number: "7" and "007" differ).
    ("ranker", "0"),
    ("ranker", "7"),
    ("ranker", "007"),
    ("ranker", "1234567890"),
    ("ranker", "18446744073709551616"),
    # Ids containing ':' (the separator is not escaped, see the collision note in hashing.py).
    ("ranker", ":"),
    ("ranker", "::"),
    ("ranker", "user:42"),
    ("ranker", "urn:tenant:7:user:42"),
    ("ranker:v2", "user-42"),
    ("ranker", "v2:user-42"),
    # Unicode: accents (NFC and NFD differ), CJK, right-to-left, emoji, ZWJ sequences.
    ("ranker", CAFE),
    ("ranker", unicodedata.normalize("NFD", CAFE)),
    ("ranker", "na\u00efve-\u00fcber-\u00c5ngstr\u00f6m"),
    ("ranker", "\u7528\u6237-\u4e00\u4e8c\u4e09"),
    ("ranker", "\u30e6\u30fc\u30b6\u30fc"),
    ("ranker", "\uc0ac\uc6a9\uc790"),
    ("ranker", "\u0645\u0633\u062a\u062e\u062f\u0645"),
    ("ranker", "\U0001f642"),
    ("ranker", "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family"),
    ("r\u00e9sum\u00e9", "user-42"),
    # Long ids: every murmur3 tail length (0-3 leftover bytes) and a 500-character id.
    ("ranker", "x" * 500),
    ("ranker", "abcdefghij" * 50),
    ("ranker", "\u00e9" * 250),
    ("t", "abc"),
    ("t", "abcd"),
    ("t", "abcde"),
    ("t", "abcdef"),
    # Empty salt is allowed (the key is then ":" + unit_id).
    ("", "user-42"),
]


def vectors() -> list[dict[str, str | int]]:
    return [{"salt": salt, "unit_id": unit_id, "bucket": bucket_of(salt, unit_id)} for salt, unit_id in CASES]


def render() -> str:
    return json.dumps(vectors(), indent=2, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python scripts/gen_hash_vectors.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {len(CASES)} vectors to {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
