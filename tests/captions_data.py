"""DataComp-style WebDatasets built from the real photos: uid and img2dataset's sizes in each .json, captions in
several languages and scripts, and the bad captions and uids the caption features must survive."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from PIL import Image

from conftest import write_tar

CAPTIONS = [
    "A mountain lake under a clear blue sky in the early morning",
    "Autumn leaves floating on the calm surface of a pond",
    "Ein ruhiger Bergsee unter einem klaren blauen Himmel",
    "Un paysage de montagne avec un lac et des nuages",
    "夕焼けの空と山の風景の写真",
    "Горное озеро под ясным голубым небом",
    "منظر طبيعي لبحيرة جبلية",
    "Colourful ceramic cups stacked on a wooden shelf",
    "The milky way over a dark forest at night",
    "Abstract painting with soft pastel colours and gentle curves",
]


def uid_of(number: int) -> str:
    """A DataComp-like uid: 32 lower-case hexadecimal digits."""
    return hashlib.md5(f"sample {number}".encode()).hexdigest()


def build_pairs_dataset(directory: Path, photos: list[Path], shards: int = 3, *, bad: bool = True) -> list[dict]:
    """Real photos in ``shards`` tars with .txt captions and DataComp-style .json (uid, original_width/height).

    With ``bad``: sample 1 has no caption, 2 an empty one, 3 only whitespace, 4 a caption that is not UTF-8,
    5 a 100 kB caption, 6 a malformed uid, 7 no uid. Returns the samples in input order (key, image, caption
    as written or None, uid, json)."""
    directory.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(photos) // shards)
    samples = []
    for shard in range(shards):
        members = []
        for i, photo in enumerate(photos[shard * per_shard : (shard + 1) * per_shard]):
            number = shard * per_shard + i
            key = f"{number:06d}"
            data = photo.read_bytes()
            width, height = Image.open(io.BytesIO(data)).size
            caption: bytes | None = CAPTIONS[number % len(CAPTIONS)].encode()
            uid: object = uid_of(number)
            if bad:
                caption = {1: None, 2: b"", 3: " \t\n\u3000 ".encode(), 4: b"caf\xe9 \xff\xfe",
                           5: ("word " * 20_000).encode()}.get(number, caption)
                uid = {6: "not-a-uid-0123456789abcdef012345", 7: None}.get(number, uid)
            doc = {"original_width": width, "original_height": height, "key": key}
            if uid is not None:
                doc["uid"] = uid
            members.append((f"{key}.jpg", data))
            if caption is not None:
                members.append((f"{key}.txt", caption))
            members.append((f"{key}.json", json.dumps(doc).encode()))
            text = None
            if caption is not None:
                try:
                    text = caption.decode("utf-8")
                except UnicodeDecodeError:
                    text = None
            samples.append({"key": key, "image": data, "caption": text, "uid": uid, "json": doc, "shard": shard})
        write_tar(directory / f"{shard:05d}.tar", members)
    return samples
