"""``hf:<path-or-id>[:split]``: Hugging Face datasets (RefCOCO family, documents, core_eval's own).

Loaded with ``datasets.load_dataset`` (a hub id, a local dataset folder, or one ``.parquet`` /
``.arrow`` / ``.jsonl`` file). Rows are read one at a time from the memory-mapped table and their
images stay encoded until a sample's image is used (:class:`~.images.EncodedImages`).

Schemas (``schema`` option; detected from the columns when not given):

=========== ===================================================================================
``lmms-lab`` lmms-lab/RefCOCO, RefCOCOplus, RefCOCOg: ``question_id``, ``image`` (bytes), ``bbox``
             ([x, y, w, h]), ``answer`` (the object's referring expressions; the first is
             ``{ref}``). Its ``question`` column is lmms-eval's captioning prompt and not used.
``jxu124``   jxu124/refcoco, refcocoplus, refcocog: ``ref_id``, ``sentences`` (``[{"sent": ...}]``),
             ``bbox`` ([x, y, w, h]), ``category_id``; images by ``image_path`` under
             ``--image-root`` (or an ``image`` column where the copy carries one).
``refs``     any referring-expression dataset, columns mapped with ``columns``.
``documents`` ``pages`` (list of images), ``question``, ``answer``, ``evidence_pages`` (1-based),
             optional ``evidence_boxes`` and ``id`` (see :mod:`.documents`).
``core``     :func:`core_eval.probes.to_hf_dataset`'s columns (``boxes`` as JSON, [x0, y0, x1, y1]).
=========== ===================================================================================

``columns`` maps a schema's roles to other column names, e.g. ``{"ref": "caption", "bbox": "box"}``
(roles: ``id``, ``image``, ``bbox``, ``ref``, ``category`` for the referring schemas; ``id``,
``pages``, ``question``, ``answer``, ``evidence_pages``, ``evidence_boxes`` for documents).
Referring rows become questions through a template (:mod:`.templates`; default ``rec``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core_eval.probes.readers import check_options, pick_rows
from core_eval.probes.readers.boxes import box_like_keys, check_box_format, parse_box, parse_boxes
from core_eval.probes.readers.documents import document_boxes
from core_eval.probes.readers.images import EncodedImages, encoded_size
from core_eval.probes.readers.templates import box_fields, resolve_template
from core_eval.probes.types import Box, ProbeArgumentError, ProbeDataError, ProbeSample

__all__ = ["HF_OPTIONS", "SCHEMAS", "parse_hf_source", "load_hf_dataset", "read_hf"]

#: Options of the ``hf:`` reader (``--knobs``); ``--image-root`` resolves image paths.
HF_OPTIONS = ("schema", "columns", "template", "answer", "bbox_format", "shuffle")


@dataclass(frozen=True)
class Schema:
    name: str
    roles: dict  # role -> default column (a tuple: the first one present)
    required: tuple
    description: str
    bbox_format: str | None = "xywh"


SCHEMAS = {s.name: s for s in (
    Schema("lmms-lab", {"id": "question_id", "image": "image", "bbox": "bbox", "ref": "answer", "category": None},
           ("image", "bbox", "ref"), "question_id, image, question, answer (expressions), bbox [x, y, w, h]"),
    Schema("jxu124", {"id": "ref_id", "image": ("image", "image_path"), "bbox": "bbox", "ref": "sentences",
                      "category": None},
           ("image", "bbox", "ref"), "ref_id, sentences, bbox [x, y, w, h], image_path (with --image-root)"),
    Schema("refs", {"id": None, "image": "image", "bbox": "bbox", "ref": "ref", "category": None},
           ("image", "bbox", "ref"), "any referring data: map image, bbox and ref with columns={...}"),
    Schema("documents", {"id": "id", "pages": "pages", "question": "question", "answer": "answer",
                         "evidence_pages": "evidence_pages", "evidence_boxes": "evidence_boxes"},
           ("pages", "question", "answer", "evidence_pages"),
           "pages (images), question, answer, evidence_pages (1-based), evidence_boxes", "xyxy"),
    Schema("core", {}, (), "core_eval's to_hf_dataset columns: id, question, answer, aliases, images, boxes",
           None),
)}
_CORE_COLUMNS = ("id", "question", "answer", "aliases", "images", "boxes", "family", "meta")


def parse_hf_source(spec: str) -> tuple[str, str | None]:
    """``(path_or_id, split)`` of ``<path-or-id>[:split]`` (a split names no folder: no ``/``)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail and len(head) > 1:
        return head, tail
    return spec, None


def load_hf_dataset(path: str, split: str | None):
    """``(datasets.Dataset, split)`` through ``datasets.load_dataset`` (one file: its format builder)."""
    import datasets

    p = Path(path)
    builders = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv"}
    try:
        if p.is_file():
            if p.suffix.lower() not in builders:
                raise ProbeArgumentError(f"hf:{path}: a single file must be one of {sorted(builders)}")
            if split not in (None, "train"):
                raise ProbeArgumentError(f"hf:{path}: a single file has one split, 'train'; drop ':{split}'")
            return datasets.load_dataset(builders[p.suffix.lower()], data_files=str(p), split="train"), "train"
        if split is not None:
            return datasets.load_dataset(path, split=split), split
        dd = datasets.load_dataset(path)
    except ProbeArgumentError:
        raise
    except ValueError as e:
        if "split" in str(e).lower():
            raise ProbeArgumentError(f"hf:{path}: {e}") from None
        raise ProbeDataError(f"hf:{path}: cannot load ({type(e).__name__}: {e})") from None
    except Exception as e:  # noqa: BLE001  (datasets raises many types: offline, not found, bad files)
        where = "" if p.exists() else (" (no such local path; as a hub id it needs the network or the "
                                       "datasets cache: download it once, or pass the local folder)")
        raise ProbeDataError(f"hf:{path}: cannot load{where}: {type(e).__name__}: {e}") from None
    if len(dd) != 1:
        raise ProbeArgumentError(f"hf:{path} has splits {sorted(dd)}; name one: hf:{path}:{sorted(dd)[0]}")
    (name, ds), = dd.items()
    return ds, name


def _detect(cols: set, columns: dict) -> str:
    if "pages" in cols:
        return "documents"
    if set(_CORE_COLUMNS[:6]) <= cols:
        return "core"
    if "sentences" in cols and "bbox" in cols:
        return "jxu124"
    if {"question_id", "answer", "bbox", "image"} <= cols:
        return "lmms-lab"
    if columns:
        return "refs"
    raise ProbeArgumentError(
        f"cannot tell the schema from the columns {sorted(cols)}; known schemas: "
        + "; ".join(f"{s.name} ({s.description})" for s in SCHEMAS.values())
        + ". Name one with --knobs '{\"schema\": \"refs\", \"columns\": {\"image\": ..., \"bbox\": ..., \"ref\": ...}}'")


def _roles(schema: Schema, columns: dict, cols: set, label: str) -> dict:
    """role -> column name (or ``None``) after the user's mapping; missing required ones are errors."""
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise ProbeArgumentError(f"{label}: columns must map roles to column names, got {columns!r}")
    unknown = sorted(set(columns) - set(schema.roles))
    if unknown:
        raise ProbeArgumentError(f"{label}: unknown role(s) {unknown} in columns for schema {schema.name!r}; "
                                 f"roles: {', '.join(schema.roles)}")
    out = {}
    for role, default in schema.roles.items():
        if role in columns:
            if columns[role] not in cols:
                raise ProbeArgumentError(f"{label}: columns[{role!r}] = {columns[role]!r} is not a column; "
                                         f"columns: {sorted(cols)}")
            out[role] = columns[role]
            continue
        cands = default if isinstance(default, tuple) else (default,)
        out[role] = next((c for c in cands if c is not None and c in cols), None)
        if out[role] is None and role == "category":
            out[role] = next((c for c in ("category", "category_name") if c in cols), None)
    missing = [r for r in schema.required if out.get(r) is None]
    if missing:
        want = {r: schema.roles[r] for r in missing}
        raise ProbeArgumentError(f"{label}: schema {schema.name!r} needs column(s) for {missing} (default names "
                                 f"{want}), not among {sorted(cols)}; map them with --knobs "
                                 f"'{{\"columns\": {{\"{missing[0]}\": \"<column>\"}}}}'")
    return out


def _ref_texts(v) -> list[str]:
    """Every referring expression in a ``ref`` value (str, list of str, or ``[{"sent": ...}]``)."""
    items = v if isinstance(v, list) else [v]
    out = []
    for it in items:
        if isinstance(it, dict):
            it = it.get("sent", it.get("raw"))
        if isinstance(it, str) and it.strip():
            out.append(it.strip())
    return out


def _scalars(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}


class _Rows:
    """Row ``i`` of a dataset as plain Python values, images left encoded (``{"bytes", "path"}``):
    read through the Arrow format, so nothing is decoded or copied."""

    def __init__(self, ds):
        self._ds = ds.with_format("arrow")

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> dict:
        return self._ds[i].to_pylist()[0]


def read_hf(spec: str, n: int | None = None, seed: int = 0, *, image_root=None, **options) -> list[ProbeSample]:
    """Samples of ``hf:<spec>`` (see the module docstring); validation errors name the dataset index."""
    label = f"hf:{spec}"
    check_options(label, options, HF_OPTIONS)
    path, split = parse_hf_source(spec)
    schema_name = options.get("schema")
    if schema_name is not None and schema_name not in SCHEMAS:
        raise ProbeArgumentError(f"{label}: unknown schema {schema_name!r}; schemas: {', '.join(SCHEMAS)}")
    fmt = options.get("bbox_format")
    if fmt is not None and check_box_format(fmt):
        raise ProbeArgumentError(f"{label}: {check_box_format(fmt)}")
    columns = options.get("columns") or {}
    root = Path(image_root) if image_root is not None else None
    ds, split = load_hf_dataset(path, split)
    label = f"hf:{path}:{split}"
    cols = set(ds.column_names)
    schema = SCHEMAS[schema_name or _detect(cols, columns)]
    if schema.name == "core":
        if fmt not in (None, "xyxy") or columns or options.get("template") or options.get("answer"):
            raise ProbeArgumentError(f"{label}: schema 'core' takes no bbox_format / columns / template / answer "
                                     "(its boxes are [x0, y0, x1, y1] JSON, its questions are given)")
        missing = [c for c in _CORE_COLUMNS[:6] if c not in cols]
        if missing:
            raise ProbeArgumentError(f"{label}: schema 'core' needs column(s) {missing}")
        roles = {c: c for c in _CORE_COLUMNS if c in cols}
    else:
        roles = _roles(schema, columns, cols, label)
    fmt = fmt or schema.bbox_format
    used = {c for c in roles.values() if c}
    stray = [c for c in box_like_keys(cols - used) if not ("bbox" in columns or "evidence_boxes" in columns)]
    if stray:
        target = {"core": "boxes", "documents": "evidence_boxes"}.get(schema.name, "bbox")
        raise ProbeArgumentError(f"{label}: column(s) {stray} look like boxes but schema {schema.name!r} reads its "
                                 f"target region from {roles.get(target, target)!r}; name the right column with "
                                 f"--knobs '{{\"columns\": {{\"{target}\": \"<column>\"}}}}' so no box is ignored")
    template = None
    if schema.name in ("lmms-lab", "jxu124", "refs"):
        import datasets

        scalar_cols = {c for c, f in ds.features.items() if isinstance(f, datasets.Value) and f.dtype != "binary"}
        fields = scalar_cols | {"ref", "box", "box_rel"} | ({"category"} if roles.get("category") else set())
        template = resolve_template(options.get("template"), options.get("answer"), fields)
    elif options.get("template") or options.get("answer"):
        raise ProbeArgumentError(f"{label}: template / answer apply to referring-expression data; schema "
                                 f"{schema.name!r} has its own questions and answers")

    image_col = roles.get("image") or roles.get("pages") or roles.get("images")
    if template is not None:  # the row columns the template reads
        used |= template.fields() & cols
    view = _Rows(ds.select_columns(sorted(used)))
    rows = pick_rows(len(view), n, options.get("shuffle", False), seed)
    samples, errors, seen = [], [], {}
    for i in rows:
        row = view[i]
        errs: list[str] = []
        s = _parse(schema, roles, row, i, errs, view, image_col, root, fmt, template, label)
        if s is not None and s.id in seen:
            errs.append(f"duplicate id {s.id!r} (first at row {seen[s.id]})")
        if errs:
            errors += [(i, e) for e in errs]
        else:
            seen[s.id] = i
            samples.append(s)
    if errors:
        bad = len({i for i, _ in errors})
        lines = "\n".join(f"  row {i}: {msg}" for i, msg in errors)
        raise ProbeDataError(f"{label}: {bad} invalid row(s) (rows are 0-based dataset indices, ds[i]):\n{lines}",
                             errors)
    if not samples:
        raise ProbeDataError(f"{label}: no rows")
    return samples


def _sizes(values, root, errs, what="image"):
    sizes = []
    for k, v in enumerate(values):
        try:
            sizes.append(encoded_size(v, root))
        except FileNotFoundError as e:
            errs.append(f"{what} {k}: {e} (set --image-root to the folder the paths are relative to)")
            sizes.append(None)
        except Exception as e:  # noqa: BLE001  (PIL raises several types)
            errs.append(f"{what} {k}: unreadable ({type(e).__name__}: {e})")
            sizes.append(None)
    return sizes


def _parse(schema, roles, row, i, errs, view, image_col, root, fmt, template, label):
    """One row -> a ProbeSample (``None`` with ``errs`` filled when invalid)."""
    def fetch(i=i, col=image_col):
        v = view[i][col]
        return v if isinstance(v, list) else [v]

    raw_images = row[image_col]
    values = raw_images if isinstance(raw_images, list) else [raw_images]
    if not values or any(v is None for v in values):
        errs.append(f"column {image_col!r}: no image")
        return None
    sizes = _sizes(values, root, errs, "page" if schema.name == "documents" else "image")
    images = EncodedImages(fetch, [s or (0, 0) for s in sizes], root, f"{label}[{i}]")
    id_col = roles.get("id")
    sid = str(row[id_col]) if id_col and row.get(id_col) is not None else f"{Path(label[3:]).name}:{i}"

    if schema.name == "core":
        boxes_raw = row["boxes"]
        try:
            boxes_raw = json.loads(boxes_raw) if isinstance(boxes_raw, str) else boxes_raw
        except json.JSONDecodeError as e:
            errs.append(f"'boxes' is not JSON ({e.msg})")
            return None
        boxes = parse_boxes(boxes_raw, sizes, "xyxy", errs)
        try:
            meta = json.loads(row["meta"]) if isinstance(row.get("meta"), str) else (row.get("meta") or {})
        except json.JSONDecodeError as e:
            errs.append(f"'meta' is not JSON ({e.msg})")
            return None
        if errs:
            return None
        return ProbeSample(id=sid, images=images, question=row["question"], answer=str(row["answer"]),
                           aliases=list(row.get("aliases") or []), boxes=boxes,
                           family=row.get("family") or "custom", meta=meta)

    if schema.name == "documents":
        q, a = row[roles["question"]], row[roles["answer"]]
        if not isinstance(q, str) or not q.strip():
            errs.append(f"column {roles['question']!r}: the question must be a non-empty string")
        if a is None or str(a).strip() == "":
            errs.append(f"column {roles['answer']!r}: the answer must be non-empty")
        ev_boxes = row.get(roles["evidence_boxes"]) if roles.get("evidence_boxes") else None
        if isinstance(ev_boxes, str):
            try:
                ev_boxes = json.loads(ev_boxes)
            except json.JSONDecodeError as e:
                errs.append(f"'evidence_boxes' is not JSON ({e.msg})")
                ev_boxes = None
        if isinstance(ev_boxes, list):  # Arrow structs give absent fields as None
            ev_boxes = [{k: v for k, v in b.items() if v is not None} if isinstance(b, dict) else b for b in ev_boxes]
        doc = {"evidence_pages": row[roles["evidence_pages"]], "evidence_boxes": ev_boxes}
        boxes, pages = document_boxes(doc, sizes, fmt, errs)
        if errs:
            return None
        return ProbeSample(id=sid, images=images, question=q, answer=str(a), boxes=boxes, family="document",
                           meta={"split": label.rsplit(":", 1)[1], "row": i, "evidence_pages": [p + 1 for p in pages]})

    # referring expressions
    refs = _ref_texts(row[roles["ref"]])
    if not refs:
        errs.append(f"column {roles['ref']!r}: no referring expression (got {str(row[roles['ref']])[:80]!r})")
    raw_box = row[roles["bbox"]]
    ok, err = parse_box(raw_box, fmt, sizes[0], f"column {roles['bbox']!r}")
    if err:
        errs.append(err + (" (RefCOCO-family datasets publish [x, y, width, height]: bbox_format 'xywh')"
                           if fmt == "xyxy" else ""))
    category = row.get(roles["category"]) if roles.get("category") else None
    if errs:
        return None
    values = {**_scalars(row), "ref": refs[0], **box_fields(ok, sizes[0])}
    if roles.get("category"):
        values["category"] = "" if category is None else str(category)
    question, answer = template.render(values)
    if not answer.strip():
        errs.append(f"template {template.name!r}: the answer is empty for this row ({template.answer!r})")
        return None
    meta = {"split": label.rsplit(":", 1)[1], "row": i, "schema": schema.name, "ref": refs[0], "refs": refs,
            "bbox": [float(v) for v in raw_box], "bbox_format": fmt, "template": template.name}
    if category is not None:
        meta["category"] = category
    return ProbeSample(id=sid, images=images, question=question, answer=answer, boxes=[Box(0, *ok)],
                       family="grounding", meta=meta)
