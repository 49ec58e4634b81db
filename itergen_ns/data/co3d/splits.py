"""Train/val/test split of one CO3D sequence, as positions into its usable, frame-number-sorted frames.

``num_input_views`` frames are chosen by ``itergen_ns.data.splits.select_input_views`` (or given explicitly, as CO3D
frame numbers or list positions) for ``train``; every other frame is ``val``/``test``. A CO3D set list either *is*
the split (when this sequence has frames both in its ``train`` and in its ``val``/``test`` subsets) or restricts the
pool that the input views are chosen from. A frame the set list names may not silently be missing.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from itergen_ns.data.co3d import annotations as ann
from itergen_ns.data.co3d.annotations import CO3DDataError
from itergen_ns.data.co3d.scene import CO3DScene
from itergen_ns.data.splits import SparseSplitConfig, select_input_views


def choose_input_views(
    scene: CO3DScene,
    pool: List[int],
    views: SparseSplitConfig,
    input_frame_numbers: Optional[Sequence[int]],
    set_list: Optional[str],
) -> Tuple[List[int], List[int]]:
    """Train/eval positions (into ``scene.frames``) chosen among the positions in ``pool``.

    Explicit ``input_frame_numbers`` win over ``views.input_views`` (positions in the pool); otherwise asking for more
    input views than the pool has is an error naming the set list (or the annotation file) the pool came from.
    """
    explicit = None
    if input_frame_numbers:
        pool_frames = [scene.frames[i] for i in pool]
        explicit = ann.frame_numbers_to_positions(pool_frames, input_frame_numbers, "input_frame_numbers")
    elif views.input_views:
        explicit = list(views.input_views)
    elif views.num_input_views > len(pool):
        source = f"set list {set_list!r}" if set_list else f"{scene.layout.frame_annotations}"
        raise CO3DDataError(
            f"sequence {scene.layout.sequence_name!r}: num_input_views={views.num_input_views} but {source} has only "
            f"{len(pool)} usable frames; ask for at most {len(pool) - 1} (0: all frames, the dense reference)"
        )
    train, evaluation = select_input_views(
        len(pool), views.num_input_views, views.input_view_seed, explicit, views.input_view_rule
    )
    return [pool[i] for i in train], [pool[i] for i in evaluation]


def set_list_subset_positions(scene: CO3DScene, set_list: str, subsets: Dict[str, List[int]], subset: str) -> List[int]:
    """Sorted positions of the frames that ``subset`` of the set list names for this sequence.

    The set list is the evaluation protocol: a listed frame that was skipped (missing image or mask) is an error.
    """
    listed = subsets.get(subset, [])
    missing = [n for n in listed if n in scene.skipped]
    if missing:
        list_file = ann.set_list_path(scene.layout.category_dir, set_list)
        raise CO3DDataError(
            f"set list {list_file}: subset {subset!r} lists frame {missing[0]} of sequence "
            f"{scene.layout.sequence_name!r}, but {scene.skipped[missing[0]]}"
            + (f" (and {len(missing) - 1} more listed frames)" if len(missing) > 1 else "")
        )
    position = {f.frame_number: i for i, f in enumerate(scene.frames)}
    return sorted(position[n] for n in listed if n in position)


def split_indices(
    scene: CO3DScene,
    views: SparseSplitConfig,
    input_frame_numbers: Optional[Sequence[int]] = None,
    set_list: Optional[str] = None,
) -> Dict[str, List[int]]:
    """Positions (into ``scene.frames``) of the ``train``, ``val`` and ``test`` splits.

    With a set list: if this sequence has frames both in ``train`` and in ``val``/``test``, the set list *is* the
    split; otherwise its frames form the pool that ``num_input_views`` chooses from.
    """
    if not set_list:
        train, evaluation = choose_input_views(
            scene, list(range(len(scene.frames))), views, input_frame_numbers, set_list
        )
        return {"train": train, "val": evaluation, "test": evaluation}
    subsets = ann.load_set_list(scene.layout.category_dir, set_list, scene.layout.sequence_name)
    train, val, test = (set_list_subset_positions(scene, set_list, subsets, s) for s in ("train", "val", "test"))
    if train and (val or test):
        return {"train": train, "val": val or test, "test": test or val}
    pool = sorted(set(train) | set(val) | set(test))
    if not pool:
        raise CO3DDataError(f"set list {set_list!r}: none of its frames of this sequence are usable")
    train, evaluation = choose_input_views(scene, pool, views, input_frame_numbers, set_list)
    return {"train": train, "val": evaluation, "test": evaluation}
