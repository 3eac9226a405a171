"""Group tar members into WebDataset samples.

Rules (those of the webdataset library, plus the safety rules it leaves to the user):

* a member's key is its path up to the first dot of its basename (directories kept in the
  key); the rest, lower-cased, is its extension: ``a/b.seg.png`` is key ``a/b``, ext ``seg.png``;
* consecutive members with the same key form one sample; a key that comes back later, or
  an extension seen twice in a row, starts a new sample with the same key;
* directories are ignored; leading ``./`` is stripped;
* rejected, each reported as a :class:`~imgcurate.errors.Failure`: absolute paths and paths
  with ``..`` (they could escape an extraction directory), names that are not UTF-8, links,
  device/fifo members, names without an extension, ``.gz`` members that do not inflate,
  members whose bytes would have to be loaded and are over ``MAX_MEMBER_BYTES``;
* a shard that is cut short keeps every sample before the cut; the sample being read at the
  cut is rejected as ``truncated_sample``.

The image of a sample is its first member with an image extension. When the caller does not
want image bytes, that member's data is skipped, not read: its offset and size are enough to
copy or decode it later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from ..common.errors import Failure
from .tar import DIRECTORY, FILE, SPECIAL, TarFormatError, TarMember, gunzip_limited, iter_tar

IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm", "pnm", "jp2", "avif"}
)
MAX_GUNZIP_BYTES = 64 * 2**20
MAX_MEMBER_BYTES = 256 * 2**20  # members loaded into memory (captions, JSON, components; images when wanted)
MAX_BINARY_BYTES = 2**31 - 1  # what one Arrow binary array holds (its offsets are 32-bit)
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # the webdataset library's own rule


@dataclass(slots=True)
class Sample:
    key: str
    index: int
    components: dict[str, TarMember] = field(default_factory=dict)
    image_ext: str | None = None

    @property
    def image(self) -> TarMember | None:
        return self.components.get(self.image_ext) if self.image_ext else None


def normalize_member_name(name: str) -> str | None:
    """The member name with leading ``./`` removed, or None if it is unsafe to use."""
    return None if unsafe_name_reason(name) else _strip_dot_slash(name)


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` is unsafe to use as a member name, or None when it is safe."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "member name is not UTF-8"
    name = _strip_dot_slash(name)
    if not name:
        return "member name is empty"
    if name.startswith("/"):
        return "member path is absolute"
    if "\0" in name:
        return "member name contains a NUL byte"
    if any(part == ".." for part in name.split("/")):
        return "member path contains '..'"
    return None


def _strip_dot_slash(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def split_key(name: str) -> tuple[str, str] | None:
    match = _KEY_EXT.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def _inflates(ext: str) -> bool:
    """Whether a member with this extension is gunzipped (``.gz`` other than compressed images)."""
    return ext.endswith(".gz") and ext[:-3] not in IMAGE_EXTENSIONS


def _component_ext(ext: str) -> str:
    """The extension a member takes in its sample (``txt.gz`` → ``txt``)."""
    return ext[:-3] if _inflates(ext) else ext


def iter_samples(
    stream: BinaryIO, shard: str, *, with_images: bool = True, total_size: int | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Iterator[Sample | Failure]:
    """Yield the samples of one shard in order, interleaved with failures.

    Only :class:`Sample` and :class:`~imgcurate.errors.Failure` come out: a stream that stops
    being a tar ends the shard with a failure, it does not raise.
    """
    current: Sample | None = None
    index = 0
    parsed: dict[str, tuple[str | None, tuple[str, str] | None]] = {}  # raw name -> (name, (key, ext)); one entry

    def parse(raw_name: str) -> tuple[str | None, tuple[str, str] | None]:
        # want_data and the loop below both need the parsed name: parse each member once
        if raw_name not in parsed:
            parsed.clear()
            name = normalize_member_name(raw_name)
            parsed[raw_name] = (name, split_key(name) if name else None)
        return parsed[raw_name]

    def want_data(raw_name: str) -> bool:
        if with_images:
            return True
        parts = parse(raw_name)[1]
        if parts is None:
            return True
        key, ext = parts
        starts_new = current is None or current.key != key or _component_ext(ext) in current.components
        return not (ext in IMAGE_EXTENSIONS and (starts_new or current.image_ext is None))

    members = iter_tar(stream, want_data, total_size, max_member_bytes)
    while True:
        try:
            member = next(members)
        except StopIteration:
            break
        except TarFormatError as cut:
            if cut.reason == "not_a_tar":
                yield Failure("not_a_tar", cut.detail, shard=shard)
                return
            cut_name = normalize_member_name(cut.member) if cut.member else None
            cut_parts = split_key(cut_name) if cut_name else None
            cut_key = cut_parts[0] if cut_parts else None
            cut_member = cut_name or (_printable(cut.member) if cut.member else None)
            if current is not None:
                # the member being read at the cut belonged to the current sample unless it would have started a new one
                if cut_parts and cut_key == current.key and _component_ext(cut_parts[1]) not in current.components:
                    yield Failure(
                        "truncated_sample", f"{cut.detail}; the sample's remaining members are lost",
                        shard=shard, member=cut_member, key=current.key,
                    )
                else:
                    yield current
            yield Failure("truncated_member", cut.detail, shard=shard, member=cut_member, key=cut_key)
            return

        if member.kind == DIRECTORY:
            continue
        name, parts = parse(member.name)
        if name is None:
            yield Failure("unsafe_member_name", unsafe_name_reason(member.name),
                          shard=shard, member=_printable(member.name))
            continue
        if member.kind != FILE:
            reason = "special_member" if member.kind == SPECIAL else "link_member"
            yield Failure(reason, f"{member.kind} member is not followed", shard=shard, member=name)
            continue
        if parts is None:
            yield Failure("no_extension", "member name has no extension, so it belongs to no sample",
                          shard=shard, member=name)
            continue
        key, ext = parts
        if member.too_large:
            yield Failure("member_too_large", f"{member.size} bytes is over the limit of {max_member_bytes} for a member "
                          "loaded into memory", shard=shard, member=name, key=key)
            continue
        if _inflates(ext) and member.data is not None:
            try:
                member.data = gunzip_limited(member.data, MAX_GUNZIP_BYTES)
            except (OSError, ValueError, EOFError) as exc:
                yield Failure("invalid_gzip", str(exc), shard=shard, member=name, key=key)
                continue
            ext = ext[:-3]
            member.size = len(member.data)
            member.offset = -1  # inflated data has no byte range in the shard

        if current is None or current.key != key or ext in current.components:
            if current is not None:
                yield current
            current = Sample(key=key, index=index)
            index += 1
        current.components[ext] = member
        if current.image_ext is None and ext in IMAGE_EXTENSIONS:
            current.image_ext = ext
    if current is not None:
        yield current


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
