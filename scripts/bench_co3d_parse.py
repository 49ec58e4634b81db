"""Time the CO3D dataparser on a synthetic 200-frame sequence (CPU only, no data download).

    python scripts/bench_co3d_parse.py [--frames 200] [--height 300 --width 400] [--extra-sequences 49]

Reports: cold parse (annotation file read + all checks; torch's one-time lazy imports excluded) of train and test
splits, a warm re-parse, and the first and cached runs of crop + mask processing. ``--extra-sequences`` pads the annotation file with other sequences of the
same length, as a real category file holds hundreds of sequences.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from co3d_fixture import make_co3d_sequence  # noqa: E402
from nerfstudio.cameras.cameras import Cameras  # noqa: E402

from itergen_ns.data.co3d import annotations as ann  # noqa: E402
from itergen_ns.data.co3d_dataparser import CO3DDataParserConfig  # noqa: E402


def pad_annotations(category_dir: Path, extra_sequences: int) -> int:
    """Append ``extra_sequences`` renamed copies of the main sequence to frame_annotations.jgz; returns #records."""
    path = category_dir / "frame_annotations.jgz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = json.load(f)
    main = [r for r in records if r["sequence_name"] == records[0]["sequence_name"]]
    for k in range(extra_sequences):
        for r in main:
            records.append(dict(r, sequence_name=f"pad_{k:04d}"))
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(records, f)
    return len(records)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def parse_splits(data: Path, **kwargs):
    parser = CO3DDataParserConfig(data=data, num_input_views=6, **kwargs).setup()
    return parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--frames", type=int, default=200)
    args.add_argument("--height", type=int, default=300)
    args.add_argument("--width", type=int, default=400)
    args.add_argument("--extra-sequences", type=int, default=49)
    opts = args.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        _, t_build = timed(
            lambda: make_co3d_sequence(
                Path(tmp), num_frames=opts.frames, sizes=[(opts.height, opts.width), (opts.width, opts.height)]
            )
        )
        seq_dir = Path(tmp) / "hydrant" / "106_12650_23736"
        n_records = pad_annotations(seq_dir.parent, opts.extra_sequences)
        print(
            f"fixture: {opts.frames} frames {opts.height}x{opts.width}, {n_records} annotation records, built in {t_build:.1f} s"
        )

        Cameras(camera_to_worlds=torch.eye(4)[None, :3], fx=1.0, fy=1.0, cx=1.0, cy=1.0)  # torch's lazy imports
        ann.clear_cache()
        (train, test), t_cold = timed(lambda: parse_splits(seq_dir))
        (train, test), t_warm = timed(lambda: parse_splits(seq_dir))
        print(f"parse train+test, cold (reads annotations): {t_cold * 1000:.0f} ms")
        print(f"parse train+test, warm (annotations cached): {t_warm * 1000:.0f} ms")
        print(f"  -> {len(train.image_filenames)} train / {len(test.image_filenames)} test cameras")

        ann.clear_cache()
        crop = dict(use_masks=True, mask_background="white", crop_size=min(opts.height, opts.width) // 2)
        _, t_crop_cold = timed(lambda: parse_splits(seq_dir, **crop))
        _, t_crop_warm = timed(lambda: parse_splits(seq_dir, **crop))
        print(f"parse with crop + masks + white background, first run (writes cache): {t_crop_cold * 1000:.0f} ms")
        print(f"parse with crop + masks + white background, cached: {t_crop_warm * 1000:.0f} ms")


if __name__ == "__main__":
    main()
