"""Ask a fine-tuned VQA model about an image from the command line.

    python demos/vqa_demo.py --model runs/vqa-daquar/model --image kitchen.jpg "what is on the table?"
    python demos/vqa_demo.py --model runs/vqa-daquar/model --image kitchen.jpg     # then type questions

The model folder is what ``vlptm finetune-vqa`` (``OUT/model``) or ``VQAFineTuner.save`` writes; the region
extractor saved inside it runs on the image once, and every question reuses its regions.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved VQA model folder")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--top-k", type=int, default=5, help="answers to show")
    parser.add_argument("--extractor", default=None, help="region extractor to use instead of the saved one")
    parser.add_argument("questions", nargs="*", help="questions (none: read them from stdin, one per line)")
    args = parser.parse_args(argv)

    from vlptm.data.images import ImageLoadError
    from vlptm.tasks import VQAFineTuner

    tuner = VQAFineTuner.load(args.model)
    if args.extractor:
        tuner.options.extractor = args.extractor
    regions = None
    if tuner.options.use_regions:
        start = time.perf_counter()
        try:
            regions = tuner.extract(args.image)
        except (ImageLoadError, FileNotFoundError) as err:
            print(f"cannot read {args.image}: {err}", file=sys.stderr)
            return 2
        print(f"{len(regions)} regions in {time.perf_counter() - start:.2f} s")
    questions = args.questions or (line.strip() for line in sys.stdin)
    for question in questions:
        if not question:
            continue
        answers = tuner.predict(regions if regions is not None else args.image, question, top_k=args.top_k)
        print(f"Q: {question}")
        for answer, probability in answers:
            print(f"   {probability:6.3f}  {answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
