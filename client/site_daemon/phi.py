"""Patient-identifying DICOM header fields: which ones a file still carries, never their values.

Hospitals de-identify before joining a federation; this finds what was missed. Only the
presence of a non-empty field is reported, so the report itself holds no PHI. The list
follows the direct identifiers of DICOM PS3.15 Annex E (names, IDs, birth data,
addresses, phone numbers, physicians, institution, accession and study numbers); study
and acquisition dates are not flagged. Nested sequences are searched too.
"""

from __future__ import annotations

import pydicom
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

PHI_TAGS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientBirthDate",
    "PatientBirthTime", "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator",
    "MilitaryRank", "ReferringPhysicianName", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord", "RequestingPhysician", "OperatorsName", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber",
    "AccessionNumber", "StudyID",
)
_PHI = frozenset(PHI_TAGS)


def phi_tags(ds: pydicom.Dataset) -> list[str]:
    """Names of the identifying fields present and non-empty in ``ds`` (nested ones included)."""
    found = set()
    for element in ds.iterall():
        if element.keyword in _PHI and element.keyword not in found and _filled(element.value):
            found.add(element.keyword)
    return [tag for tag in PHI_TAGS if tag in found]


def _filled(value) -> bool:
    if isinstance(value, Sequence):  # filled when any field inside it is
        return any(_filled(element.value) for item in value for element in item)
    if isinstance(value, (list, tuple, MultiValue)):
        return any(_filled(v) for v in value)
    return value is not None and str(value).strip() != ""
