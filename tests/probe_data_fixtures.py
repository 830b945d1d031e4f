"""Small datasets in the real published schemas, written by the tests themselves (no download).

- :func:`write_lmms_lab`: lmms-lab/RefCOCO* parquet (the features of its dataset card, the hub's
  ``data/<split>-00000-of-00001.parquet`` layout), written with ``datasets``;
- :func:`write_jxu124`: jxu124/refcoco* parquet (``sentences`` structs, ``image_path`` on disk);
- :func:`write_coco`: a COCO ``instances_*.json`` + image folder (optionally RefCOCO ``refs``);
- :func:`write_document_jsonl`: multi-page document rows with page images.

Images are random noise of distinct sizes, so a decoded pixel mismatch or a swapped size shows.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(w: int, h: int, seed: int) -> Image.Image:
    g = np.random.default_rng(seed)
    return Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


LMMS_ROWS = [  # (question_id, size, bbox xywh, expressions)
    ("q0", (64, 48), [4.0, 6.0, 20.0, 10.0], ["the dog on the left", "brown dog"]),
    ("q1", (50, 40), [10.5, 0.0, 39.5, 40.0], ["man in red"]),
    ("q2", (32, 32), [0.0, 0.0, 16.0, 16.0], ["top left cup"]),
]


def lmms_features():
    import datasets
    from datasets import Features, List, Value

    return Features({"question_id": Value("string"), "image": datasets.Image(), "question": Value("string"),
                     "answer": List(Value("string")), "segmentation": List(Value("float32")),
                     "bbox": List(Value("float32")), "iscrowd": Value("int8"), "file_name": Value("string")})


def write_lmms_lab(root: Path, rows=LMMS_ROWS, splits=("val",)) -> Path:
    """``root/data/<split>-00000-of-00001.parquet`` for each split; returns ``root``."""
    import datasets

    cols = {k: [] for k in lmms_features()}
    for i, (qid, (w, h), bbox, refs) in enumerate(rows):
        cols["question_id"].append(qid)
        cols["image"].append({"bytes": png_bytes(noise_image(w, h, i)), "path": None})
        cols["question"].append("Please carefully observe the area circled in the image and come up with a "
                                "caption for the area.")
        cols["answer"].append(refs)
        cols["segmentation"].append([1.0, 2.0, 3.0, 4.0])
        cols["bbox"].append(bbox)
        cols["iscrowd"].append(0)
        cols["file_name"].append(f"COCO_train2014_{i:012d}.jpg")
    ds = datasets.Dataset.from_dict(cols, features=lmms_features())
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split in splits:
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def write_jxu124(root: Path, image_dir: Path) -> Path:
    """jxu124/refcocog-style parquet (``data/validation-...``) whose images are files under
    ``image_dir`` named by ``image_path``."""
    import datasets
    from datasets import Features, List, Value

    feats = Features({
        "image_id": Value("int64"), "split": Value("string"),
        "sentences": List({"raw": Value("string"), "sent": Value("string"), "sent_id": Value("int64"),
                           "tokens": List(Value("string"))}),
        "file_name": Value("string"), "category_id": Value("int64"), "ann_id": Value("int64"),
        "sent_ids": List(Value("int64")), "ref_id": Value("int64"), "raw_anns": Value("string"),
        "raw_image_info": Value("string"), "raw_sentences": Value("string"), "image_path": Value("string"),
        "bbox": List(Value("float64")), "captions": List(Value("string")), "global_image_id": Value("string"),
        "anns_id": Value("string"),
    })
    rows = [(101, (60, 40), [2.0, 3.0, 20.0, 30.0], "the small cat", 17),
            (102, (48, 64), [10.0, 10.0, 38.0, 54.0], "a tall lamp", 64)]
    cols = {k: [] for k in feats}
    (image_dir / "coco" / "train2014").mkdir(parents=True, exist_ok=True)
    for i, (ref_id, (w, h), bbox, sent, cat) in enumerate(rows):
        rel = f"coco/train2014/COCO_train2014_{ref_id:012d}.jpg"
        noise_image(w, h, 50 + i).save(image_dir / rel, format="PNG")  # PNG bytes under a .jpg name: PIL sniffs
        cols["image_id"].append(ref_id)
        cols["split"].append("val")
        cols["sentences"].append([{"raw": sent.capitalize(), "sent": sent, "sent_id": 7, "tokens": sent.split()}])
        cols["file_name"].append(f"COCO_train2014_{ref_id:012d}_{i}.jpg")
        cols["category_id"].append(cat)
        cols["ann_id"].append(1000 + i)
        cols["sent_ids"].append([7])
        cols["ref_id"].append(ref_id)
        cols["raw_anns"].append(json.dumps({"bbox": bbox, "category_id": cat}))
        cols["raw_image_info"].append(json.dumps({"width": w, "height": h}))
        cols["raw_sentences"].append(json.dumps([sent]))
        cols["image_path"].append(rel)
        cols["bbox"].append(bbox)
        cols["captions"].append([sent])
        cols["global_image_id"].append(f"coco.{ref_id}")
        cols["anns_id"].append(str(1000 + i))
    (root / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(cols, features=feats).to_parquet(
        str(root / "data" / "validation-00000-of-00001.parquet"))
    return root


def write_coco(root: Path, *, refs: bool = False, sentences: bool = False) -> tuple[Path, Path]:
    """``(instances.json, image folder)``: 3 images; image 1 has one dog and two cats, image 2
    one dog and a crowd of people, image 3 one cup."""
    img = root / "val2017"
    img.mkdir(parents=True, exist_ok=True)
    images = [(1, "000001.jpg", 80, 60), (2, "000002.jpg", 40, 30), (3, "000003.jpg", 30, 30)]
    for k, (iid, name, w, h) in enumerate(images):
        noise_image(w, h, 100 + k).save(img / name, format="JPEG", quality=95)
    anns = [
        {"id": 10, "image_id": 1, "category_id": 18, "bbox": [1.0, 2.0, 30.0, 20.0], "area": 600.0, "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 17, "bbox": [40.0, 2.0, 30.0, 20.0], "area": 600.0, "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 17, "bbox": [5.0, 30.0, 30.0, 29.5], "area": 885.0, "iscrowd": 0},
        {"id": 13, "image_id": 2, "category_id": 18, "bbox": [0.0, 0.0, 40.0, 30.0], "area": 1200.0, "iscrowd": 0},
        {"id": 14, "image_id": 2, "category_id": 1, "bbox": [0.0, 0.0, 20.0, 10.0], "area": 200.0, "iscrowd": 1},
        {"id": 15, "image_id": 3, "category_id": 47, "bbox": [3.0, 4.0, 10.0, 12.0], "area": 120.0, "iscrowd": 0},
    ]
    if sentences:
        anns[1]["sentences"] = [{"sent": "the upper cat"}]
        anns[2]["sentences"] = ["the lower cat", "cat at the bottom"]
    data = {"info": {"description": "test"}, "licenses": [],
            "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
            "annotations": anns,
            "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                           {"id": 17, "name": "cat", "supercategory": "animal"},
                           {"id": 18, "name": "dog", "supercategory": "animal"},
                           {"id": 47, "name": "cup", "supercategory": "kitchen"}]}
    if refs:
        data["refs"] = [
            {"ref_id": 0, "ann_id": 12, "image_id": 1, "split": "val", "category_id": 17,
             "sentences": [{"raw": "The lower cat", "sent": "the lower cat", "sent_id": 0}]},
            {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "train", "category_id": 17,
             "sentences": [{"raw": "Upper cat", "sent": "upper cat", "sent_id": 1}]},
            {"ref_id": 2, "ann_id": 15, "image_id": 3, "split": "val", "category_id": 47,
             "sentences": [{"raw": "A cup", "sent": "a cup", "sent_id": 2}, {"sent": "cup"}]},
        ]
    path = root / "annotations" / "instances_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path, img


def write_pages(folder: Path, sizes) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k, (w, h) in enumerate(sizes):
        noise_image(w, h, 200 + k).save(folder / f"p{k + 1}.png")
        names.append(f"{folder.name}/p{k + 1}.png")
    return names


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path
