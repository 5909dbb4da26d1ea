"""Build the local search index from jsonl corpora.

    python -m openrlhf_tapo.cli.build_index --text corpus.jsonl --images images.jsonl --out DIR [--overwrite]

Text rows: {"id", "title", "text", "url"} (only "text" is required). Image rows: {"id", "title", "url", "image"}
with "image" a path relative to the corpus file or base64-encoded image bytes (parquet: also raw bytes or a
{"bytes", "path"} struct). Files ending in .parquet are read as parquet, others as jsonl. See docs/tools.md.
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from openrlhf_tapo.search.local_index import CorpusError, LocalIndex, read_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", help="text corpus (.jsonl or .parquet)")
    parser.add_argument("--images", help="image corpus (.jsonl or .parquet)")
    parser.add_argument("--out", required=True, help="index directory to create")
    parser.add_argument("--thumbnail-side", type=int, default=256, help="longest side of stored thumbnails")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    args = parser.parse_args(argv)
    if not args.text and not args.images:
        parser.error("give --text and/or --images")

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int) -> None:
        bar = bars.setdefault(stage, tqdm(desc=f"{stage} rows", unit=" rows", file=sys.stderr))
        bar.update(done - bar.n)

    start = time.perf_counter()
    try:
        index = LocalIndex.build(
            read_corpus(args.text) if args.text else [],
            read_corpus(args.images, images=True) if args.images else [],
            args.out,
            thumbnail_side=args.thumbnail_side,
            progress=progress,
            overwrite=args.overwrite,
        )
    except (CorpusError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        for bar in bars.values():
            bar.close()
    print(
        f"index {args.out}: {index.num_passages} passages, {index.num_images} images "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
