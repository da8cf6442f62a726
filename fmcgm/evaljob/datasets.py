"""The evaluation's datasets and the paper's seeded sampling without replacement.

Two layouts, as the datasets are distributed:
- MS-COCO captions: an annotations file (``captions_val2017.json``: ``images`` with ``id`` and
  ``file_name``, ``annotations`` with ``image_id`` and ``caption``) and the image folder. An
  image's caption is its first by annotation id; images without a caption are not drawn.
- Hugging Face imagefolder: a folder with ``metadata.jsonl``, one JSON object per line with
  ``file_name`` (relative to the folder) and the caption in ``text`` (or ``caption``, or the
  first of ``captions``), as CelebA-HQ caption sets are kept.

Sampling: the items sorted by id are shuffled with ``random.Random(seed)`` and the first
``count`` taken, so a larger count extends the same sample (a rerun with more items keeps
what is done) and every machine draws the same items.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

CAPTION_FIELDS = ("text", "caption", "captions")


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class Item:
    dataset: str   # the name given on the command line ("MS-COCO", "CelebA-HQ")
    item: str      # the id within the dataset (COCO image id, imagefolder file name)
    path: str      # the picture file
    caption: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.item)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{what}: {path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise DatasetError(f"{what}: {path} is not JSON ({error})") from None


def coco_items(name: str, annotations, images) -> list[Item]:
    """Every captioned image of a COCO captions annotations file."""
    annotations, images = Path(annotations), Path(images)
    data = _read_json(annotations, f"--coco {name}")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"--coco {name}: {annotations} has no 'images' and 'annotations' lists (a COCO captions "
                           "file such as captions_val2017.json)")
    if not images.is_dir():
        raise DatasetError(f"--coco {name}: the image folder {images} does not exist")
    first: dict = {}
    for record in data["annotations"]:
        caption = record.get("caption") if isinstance(record, dict) else None
        if isinstance(caption, str) and caption.strip():
            key = (record.get("id", 0), caption.strip())
            image_id = record.get("image_id")
            if image_id not in first or key < first[image_id]:
                first[image_id] = key
    items = []
    for image in data["images"]:
        if isinstance(image, dict) and image.get("id") in first and isinstance(image.get("file_name"), str):
            items.append(Item(name, str(image["id"]), str(images / image["file_name"]), first[image["id"]][1]))
    if not items:
        raise DatasetError(f"--coco {name}: {annotations} lists no image with a caption")
    return items


def _caption(record: dict):
    for field_name in CAPTION_FIELDS:
        value = record.get(field_name)
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def imagefolder_items(name: str, folder) -> list[Item]:
    """Every captioned picture of a Hugging Face imagefolder (``metadata.jsonl``)."""
    folder = Path(folder)
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise DatasetError(f"--imagefolder {name}: {metadata} does not exist (an imagefolder keeps its captions in "
                           "metadata.jsonl: one {\"file_name\": ..., \"text\": ...} per line)")
    items, seen = [], set()
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise DatasetError(f"--imagefolder {name}: {metadata} line {number} is not JSON ({error})") from None
        file_name = record.get("file_name") if isinstance(record, dict) else None
        caption = _caption(record) if isinstance(record, dict) else None
        if not isinstance(file_name, str) or caption is None:
            raise DatasetError(f"--imagefolder {name}: {metadata} line {number} needs \"file_name\" and a caption in "
                               f"one of {', '.join(CAPTION_FIELDS)}")
        if file_name not in seen:
            seen.add(file_name)
            items.append(Item(name, file_name, str(folder / file_name), caption))
    if not items:
        raise DatasetError(f"--imagefolder {name}: {metadata} is empty")
    return items


def sample(items: list[Item], count: int, seed: int) -> list[Item]:
    """``count`` items drawn without replacement with ``seed`` (all of them when there are fewer)."""
    if count < 1:
        raise DatasetError(f"--samples must be at least 1, got {count}")
    ordered = sorted(items, key=lambda item: item.item)
    random.Random(seed).shuffle(ordered)
    return ordered[:count]
