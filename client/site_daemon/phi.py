"""What of a DICOM file's header could identify a patient: never the values, only names and counts.

Hospitals de-identify before joining a federation; this finds what was missed. The list is
DICOM's Basic Application Level Confidentiality Profile (PS3.15 Annex E, edition 2026c),
as the `dicom-anonymizer` package tabulates it: every attribute the profile removes,
empties or replaces, searched in nested sequences too. Reported per file:
- the profile's attributes present and non-empty (its UIDs apart: every file has some, and a
  de-identifier replaces them rather than removing them);
- private tags, which the profile removes;
- the de-identification markers (``PatientIdentityRemoved``, ``DeidentificationMethod``).
A file is *de-identified* when it is marked so (``PatientIdentityRemoved`` YES), keeps no
private tags and none of the attributes the profile always removes (the rest may hold the
dummy values de-identifiers write); it is *identifying* when, unmarked, it carries any
profile attribute or private tag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag

MARKERS = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence")


@dataclass
class HeaderFindings:
    """One file's findings: attribute names only."""

    attributes: list[str] = field(default_factory=list)  # Basic Profile attributes present and non-empty
    removed_by_profile: list[str] = field(default_factory=list)  # of those, the ones it always removes (X)
    uids: list[str] = field(default_factory=list)  # the profile's UIDs present
    private_tags: int = 0
    markers: list[str] = field(default_factory=list)  # de-identification markers present
    marked: bool = False  # PatientIdentityRemoved is YES

    @property
    def verdict(self) -> str:
        if self.marked and not self.private_tags and not self.removed_by_profile:
            return "de-identified"
        if self.attributes or self.private_tags:
            return "identifying"
        return "no identifying attributes"


@dataclass(frozen=True)
class _Profile:
    names: dict  # tag -> attribute name
    repeating: tuple  # (group, element, group mask, element mask, name): curves and overlays (50xx, 60xx)
    removed: frozenset  # the attributes the profile always removes (action X)
    uids: frozenset

    def name(self, tag) -> str | None:
        if tag in self.names:
            return self.names[tag]
        for group, element, group_mask, element_mask, name in self.repeating:
            if tag.group & group_mask == group & group_mask and tag.element & element_mask == element & element_mask:
                return name
        return None


@cache
def _profile() -> _Profile:
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as annex_e

    names, repeating, removed = {}, [], set()
    for category in ("D_TAGS", "Z_TAGS", "X_TAGS", "U_TAGS", "Z_D_TAGS", "X_Z_TAGS", "X_D_TAGS",
                     "X_Z_D_TAGS", "X_Z_U_STAR_TAGS"):
        for entry in getattr(annex_e, category):
            if len(entry) == 4:
                repeating.append((*entry, f"({entry[0] >> 8:02X}xx,{entry[1]:04X})"))
                continue
            tag = Tag(*entry)
            names[tag] = keyword_for_tag(tag) or str(tag)
            if category == "X_TAGS":
                removed.add(tag)
    uids = frozenset(Tag(*t) for t in annex_e.U_TAGS + annex_e.X_Z_U_STAR_TAGS if len(t) == 2)
    return _Profile(names, tuple(repeating), frozenset(removed), uids)


def scan_header(ds: pydicom.Dataset) -> HeaderFindings:
    """The findings of ``ds`` (nested sequences included); no value is kept."""
    profile = _profile()
    found = HeaderFindings()
    seen: set = set()
    for element in ds.iterall():
        if element.tag.is_private:
            found.private_tags += 1
            continue
        if element.keyword in MARKERS and element.keyword not in found.markers:
            found.markers.append(element.keyword)
            if element.keyword == "PatientIdentityRemoved":
                found.marked = str(element.value).strip().upper() == "YES"
        name = profile.name(element.tag)
        if name is None or name in seen or not _filled(element.value):
            continue
        seen.add(name)
        if element.tag in profile.uids:
            found.uids.append(name)
            continue
        found.attributes.append(name)
        if element.tag in profile.removed or name.startswith("("):  # curves and overlays: removed
            found.removed_by_profile.append(name)
    return found


def _filled(value) -> bool:
    if isinstance(value, Sequence):  # filled when any field inside it is
        return any(_filled(element.value) for item in value for element in item)
    if isinstance(value, (list, tuple, MultiValue)):
        return any(_filled(v) for v in value)
    return value is not None and str(value).strip() != ""
