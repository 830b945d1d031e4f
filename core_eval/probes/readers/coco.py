"""``coco:<instances.json>``: COCO-format annotations + an image folder (``--image-root``).

The file needs ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
(``id``, ``image_id``, ``category_id``, ``bbox`` as [x, y, width, height], optional ``iscrowd``)
and ``categories`` (``id``, ``name``). One probe per referred object:

- with a top-level ``refs`` list (RefCOCO's refs file as JSON: ``ref_id``, ``ann_id``,
  ``sentences`` = ``[{"sent": ...}]``, optional ``split``): one probe per ref, ``{ref}`` its first
  sentence (option ``split`` keeps the refs of one split);
- else annotations that carry ``sentences`` (strings or ``{"sent": ...}``): one probe each;
- else (plain detection data) ``{ref}`` is "the <category name>", one probe per annotation whose
  category occurs once in its image; the others would be ambiguous and are skipped with a
  warning that counts them (``ambiguous="error"`` makes them an error instead).

Crowd annotations (``iscrowd: 1``) are never targets. Questions come from a template
(:mod:`.templates`, default ``rec``; ``category`` works here too). Image sizes are read from the
files and must match the annotation's ``width`` / ``height``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from core_eval.probes.readers import check_options, pick_rows
from core_eval.probes.readers.boxes import parse_box
from core_eval.probes.readers.images import encoded_size
from core_eval.probes.readers.templates import box_fields, resolve_template
from core_eval.probes.types import Box, LazyImages, ProbeArgumentError, ProbeDataError, ProbeSample

__all__ = ["COCO_OPTIONS", "read_coco"]

COCO_OPTIONS = ("template", "answer", "split", "ambiguous", "shuffle")
_REQUIRED = {"images": ("id", "file_name", "width", "height"), "annotations": ("id", "image_id", "category_id", "bbox"),
             "categories": ("id", "name")}


def _frames(data: dict, label: str):
    import pandas as pd

    missing = [k for k in _REQUIRED if not isinstance(data.get(k), list)]
    if missing:
        raise ProbeDataError(f"{label}: not a COCO instances file: missing list(s) {missing} "
                             f"(needs images, annotations, categories)")
    frames = {}
    for key, cols in _REQUIRED.items():
        df = pd.DataFrame(data[key])
        lack = [c for c in cols if c not in df.columns]
        if lack or not len(df):
            raise ProbeDataError(f"{label}: '{key}' entries need {list(cols)}; missing {lack or 'every entry'}")
        frames[key] = df
    if "iscrowd" not in frames["annotations"]:
        frames["annotations"]["iscrowd"] = 0
    frames["annotations"]["iscrowd"] = frames["annotations"]["iscrowd"].fillna(0).astype(int)
    frames["annotations"]["position"] = range(len(frames["annotations"]))
    return frames


def _sentences(v) -> list[str]:
    if not isinstance(v, list):
        return []
    out = [s.get("sent", s.get("raw")) if isinstance(s, dict) else s for s in v]
    return [s.strip() for s in out if isinstance(s, str) and s.strip()]


def read_coco(path: str, n: int | None = None, seed: int = 0, *, image_root=None, **options) -> list[ProbeSample]:
    """Samples of ``coco:<path>`` (see the module docstring)."""
    import pandas as pd

    label = f"coco:{path}"
    check_options(label, options, COCO_OPTIONS)
    ambiguous = options.get("ambiguous", "skip")
    if ambiguous not in ("skip", "error"):
        raise ProbeArgumentError(f"{label}: ambiguous must be 'skip' or 'error', got {ambiguous!r}")
    if image_root is None:
        raise ProbeArgumentError(f"{label}: pass --image-root, the folder holding the images' file_name "
                                 "(e.g. coco/val2017)")
    root = Path(image_root).resolve()  # a relative --image-root is relative to the working directory
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ProbeDataError(f"{label}: cannot read ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ProbeDataError(f"{label}: not a COCO instances file (top level is not an object)")
    f = _frames(data, label)
    anns = f["annotations"].merge(f["images"].add_prefix("image_"), how="left", on="image_id",
                                  indicator="has_image")
    anns = anns.merge(f["categories"][["id", "name"]].rename(columns={"id": "category_id", "name": "category"}),
                      how="left", on="category_id", indicator="has_category")
    by_ann = anns.set_index("id", drop=False)

    if "refs" in data:
        refs = pd.DataFrame(data["refs"])
        if "ann_id" not in refs or "sentences" not in refs:
            raise ProbeDataError(f"{label}: 'refs' entries need ann_id and sentences")
        refs["position"] = range(len(refs))
        if options.get("split") is not None:
            if "split" not in refs:
                raise ProbeArgumentError(f"{label}: option split given, but the refs carry no 'split'")
            splits = sorted(refs["split"].dropna().unique())
            refs = refs[refs["split"] == options["split"]]
            if not len(refs):
                raise ProbeArgumentError(f"{label}: no refs in split {options['split']!r}; splits: {splits}")
        units = [("refs", int(r.position), r.ann_id, _sentences(r.sentences),
                  f"ref:{r.ref_id}" if "ref_id" in refs and pd.notna(r.ref_id) else f"ref:{r.position}")
                 for r in refs.itertuples()]
    elif options.get("split") is not None:
        raise ProbeArgumentError(f"{label}: option split selects refs, and this file has no 'refs'")
    elif "sentences" in anns:
        units = [("annotations", int(a.position), a.id, _sentences(a.sentences), f"coco:{a.id}")
                 for a in anns.itertuples() if _sentences(a.sentences)]
    else:
        solid = anns[anns.iscrowd == 0]
        counts = anns.groupby(["image_id", "category_id"]).size()
        multi = counts[counts > 1].index
        key = pd.MultiIndex.from_frame(solid[["image_id", "category_id"]])
        unique = solid[~key.isin(multi)]
        dropped = solid[key.isin(multi)]
        if len(dropped):
            msg = (f"{label}: {len(dropped)} of {len(solid)} annotations are not unique in their image's category "
                   "('the <category>' would be ambiguous) and are skipped; add referring expressions "
                   "(annotation 'sentences' or a 'refs' list) to use them")
            if ambiguous == "error":
                pos = ", ".join(f"annotations[{p}]" for p in dropped.position[:5])
                raise ProbeDataError(f"{msg} ({pos}, ...)")
            warnings.warn(msg, stacklevel=3)
        units = [("annotations", int(a.position), a.id, [f"the {a.category}"] if isinstance(a.category, str) else [],
                  f"coco:{a.id}") for a in unique.itertuples()]

    fields = {"ref", "category", "box", "box_rel", "id", "image_id", "category_id", "file_name", "width", "height"}
    template = resolve_template(options.get("template"), options.get("answer"), fields)
    picked = [units[k] for k in pick_rows(len(units), n, options.get("shuffle", False), seed)]
    samples, errors, seen = [], [], set()
    for where_key, pos, ann_id, refs_, sid in picked:
        where = f"{where_key}[{pos}]"
        errs: list[str] = []
        s = _sample(by_ann, ann_id, refs_, sid, root, template, errs)
        if s is not None and s.id in seen:
            errs.append(f"duplicate id {s.id!r}")
        if errs:
            errors += [(pos, f"{where}: {e}") for e in errs]
        else:
            seen.add(s.id)
            samples.append(s)
    if errors:
        bad = len({p for p, _ in errors})
        raise ProbeDataError(f"{label}: {bad} invalid entr{'y' if bad == 1 else 'ies'}:\n" + "\n".join(f"  {m}" for _, m in errors), errors)
    if not samples:
        raise ProbeDataError(f"{label}: no usable annotations")
    return samples


def _sample(by_ann, ann_id, refs, sid, root, template, errs):
    if ann_id not in by_ann.index:
        errs.append(f"ann_id {ann_id} is not an annotation id")
        return None
    a = by_ann.loc[ann_id]
    if getattr(a, "ndim", 1) > 1:
        errs.append(f"annotation id {ann_id} occurs more than once")
        return None
    if a.has_image != "both":
        errs.append(f"annotation {ann_id}: image_id {a.image_id} is not in 'images'")
        return None
    if a.has_category != "both":
        errs.append(f"annotation {ann_id}: category_id {a.category_id} is not in 'categories'")
        return None
    if int(a.iscrowd):
        errs.append(f"annotation {ann_id} is a crowd region (iscrowd 1), not one object; refer to another")
        return None
    if not refs:
        errs.append(f"annotation {ann_id}: no referring expression")
        return None
    fp = root / str(a.image_file_name)
    try:
        size = encoded_size(str(fp))
    except FileNotFoundError:
        errs.append(f"image file not found: {a.image_file_name!r} (resolved to {fp}; --image-root is {root})")
        return None
    except Exception as e:  # noqa: BLE001
        errs.append(f"image file unreadable: {fp} ({type(e).__name__}: {e})")
        return None
    want = (int(a.image_width), int(a.image_height))
    if size != want:
        errs.append(f"image {a.image_file_name!r} is {size[0]}x{size[1]} but 'images' says {want[0]}x{want[1]}; "
                    "the boxes are for the annotated size: use the original images")
        return None
    box, err = parse_box(list(a.bbox) if isinstance(a.bbox, (list, tuple)) else a.bbox, "xywh", size,
                         f"annotation {ann_id} bbox")
    if err:
        errs.append(err)
        return None
    values = {"ref": refs[0], "category": str(a.category), "id": int(a.id), "image_id": int(a.image_id),
              "category_id": int(a.category_id), "file_name": str(a.image_file_name), "width": want[0],
              "height": want[1], **box_fields(box, size)}
    question, answer = template.render(values)
    meta = {"ann_id": int(a.id), "image_id": int(a.image_id), "category": str(a.category),
            "ref": refs[0], "refs": refs, "bbox": [float(v) for v in a.bbox], "bbox_format": "xywh",
            "template": template.name}
    return ProbeSample(id=sid, images=LazyImages([fp], [size]), question=question, answer=answer,
                       boxes=[Box(0, *box)], family="grounding", meta=meta)
