"""Group tar members into WebDataset samples, member by member.

The rules (key, extension, grouping, unsafe names, compressed members) are those of
:mod:`~imgcurate.io.rules`; this module applies them to a stream of tar members and adds the
safety rules webdataset leaves to the user, each a :class:`~imgcurate.common.errors.Failure`:
unsafe names, links, device/fifo members, names without an extension, ``.gz`` members that do
not inflate, members whose bytes would have to be loaded and are over ``MAX_MEMBER_BYTES``. A
shard that is cut short keeps every sample before the cut; the sample being read at the cut is
rejected as ``truncated_sample``.

When the caller does not want image bytes, a sample's image member is never read: its offset and
size are enough to copy or decode it later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from ..common.errors import Failure
from .rules import (
    IMAGE_EXTENSIONS, component_ext, inflates, is_image, normalize_member_name, split_key, starts_new_sample,
    unsafe_name_reason,
)
from .tar import DIRECTORY, FILE, SPECIAL, TarFormatError, TarMember, gunzip_limited, iter_tar

MAX_GUNZIP_BYTES = 64 * 2**20
MAX_MEMBER_BYTES = 256 * 2**20  # members loaded into memory (captions, JSON, components; images when wanted)
MAX_BINARY_BYTES = 2**31 - 1  # what one Arrow binary array holds (its offsets are 32-bit)

__all__ = ["IMAGE_EXTENSIONS", "MAX_BINARY_BYTES", "MAX_MEMBER_BYTES", "Sample", "iter_samples"]


@dataclass(slots=True)
class Sample:
    key: str
    index: int
    components: dict[str, TarMember] = field(default_factory=dict)
    image_ext: str | None = None

    @property
    def image(self) -> TarMember | None:
        return self.components.get(self.image_ext) if self.image_ext else None


class _Grouping:
    """The samples of one shard as its members come: the sample being filled, and the rules per member."""

    def __init__(self, shard: str, with_images: bool, max_member_bytes: int):
        self.shard, self.with_images, self.max_member_bytes = shard, with_images, max_member_bytes
        self.current: Sample | None = None
        self.count = 0
        self._parsed: tuple[str, str | None, tuple[str, str] | None] | None = None

    def parse(self, raw_name: str) -> tuple[str | None, tuple[str, str] | None]:
        """(safe name, (key, ext)) of a raw member name; the last one is remembered, since
        :meth:`want_data` and :meth:`member` ask about the same member in turn."""
        if self._parsed is None or self._parsed[0] != raw_name:
            name = normalize_member_name(raw_name)
            self._parsed = (raw_name, name, split_key(name) if name else None)
        return self._parsed[1], self._parsed[2]

    def want_data(self, raw_name: str) -> bool:
        """Whether the scanner should read a member's bytes: all of them, except the image of a
        sample when image bytes are not wanted."""
        if self.with_images:
            return True
        parts = self.parse(raw_name)[1]
        if parts is None:
            return True
        key, ext = parts
        current = self.current
        starts_new = starts_new_sample(current and current.key, current.components if current else (), key, component_ext(ext))
        return not (is_image(ext) and (starts_new or current.image_ext is None))

    def member(self, member: TarMember) -> Sample | Failure | None:
        """Take one member: a failure when it is rejected, the completed previous sample when this
        member starts a new one, else None."""
        name, parts = self.parse(member.name)
        if name is None:
            return Failure("unsafe_member_name", unsafe_name_reason(member.name), shard=self.shard, member=_printable(member.name))
        if member.kind != FILE:
            reason = "special_member" if member.kind == SPECIAL else "link_member"
            return Failure(reason, f"{member.kind} member is not followed", shard=self.shard, member=name)
        if parts is None:
            return Failure("no_extension", "member name has no extension, so it belongs to no sample", shard=self.shard, member=name)
        key, ext = parts
        if member.too_large:
            return Failure("member_too_large", f"{member.size} bytes is over the limit of {self.max_member_bytes} for a member "
                           "loaded into memory", shard=self.shard, member=name, key=key)
        if inflates(ext) and member.data is not None:
            try:
                member.data = gunzip_limited(member.data, MAX_GUNZIP_BYTES)
            except (OSError, ValueError, EOFError) as exc:
                return Failure("invalid_gzip", str(exc), shard=self.shard, member=name, key=key)
            ext = ext[:-3]
            member.size = len(member.data)
            member.offset = -1  # inflated data has no byte range in the shard
        return self._add(key, ext, member)

    def _add(self, key: str, ext: str, member: TarMember) -> Sample | None:
        completed = None
        current = self.current
        if starts_new_sample(current and current.key, current.components if current else (), key, ext):
            completed = current
            current = self.current = Sample(key=key, index=self.count)
            self.count += 1
        current.components[ext] = member
        if current.image_ext is None and is_image(ext):
            current.image_ext = ext
        return completed

    def at_cut(self, cut: TarFormatError) -> list[Sample | Failure]:
        """What the shard still yields where it stops being a tar: the sample being filled (or a
        ``truncated_sample`` failure when the member at the cut belonged to it), then the cut itself."""
        if cut.reason == "not_a_tar":
            return [Failure("not_a_tar", cut.detail, shard=self.shard)]
        cut_name = normalize_member_name(cut.member) if cut.member else None
        cut_parts = split_key(cut_name) if cut_name else None
        cut_key = cut_parts[0] if cut_parts else None
        cut_member = cut_name or (_printable(cut.member) if cut.member else None)
        out: list[Sample | Failure] = []
        current = self.current
        if current is not None:
            # the member at the cut belonged to the current sample unless it would have started a new one
            if cut_parts and not starts_new_sample(current.key, current.components, cut_key, component_ext(cut_parts[1])):
                out.append(Failure("truncated_sample", f"{cut.detail}; the sample's remaining members are lost",
                                   shard=self.shard, member=cut_member, key=current.key))
            else:
                out.append(current)
        out.append(Failure("truncated_member", cut.detail, shard=self.shard, member=cut_member, key=cut_key))
        return out


def iter_samples(
    stream: BinaryIO, shard: str, *, with_images: bool = True, total_size: int | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Iterator[Sample | Failure]:
    """Yield the samples of one shard in order, interleaved with failures.

    Only :class:`Sample` and :class:`~imgcurate.common.errors.Failure` come out: a stream that stops
    being a tar ends the shard with a failure, it does not raise.
    """
    grouping = _Grouping(shard, with_images, max_member_bytes)
    members = iter_tar(stream, grouping.want_data, total_size, max_member_bytes)
    while True:
        try:
            member = next(members)
        except StopIteration:
            break
        except TarFormatError as cut:
            yield from grouping.at_cut(cut)
            return
        if member.kind == DIRECTORY:
            continue
        item = grouping.member(member)
        if item is not None:
            yield item
    if grouping.current is not None:
        yield grouping.current


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
