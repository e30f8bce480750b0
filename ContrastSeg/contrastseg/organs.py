"""The BTCV 13-organ table: ids, names, colours and SNOMED CT terminology.

Every file, model and Slicer segment in ContrastSeg uses these ids (METHODS.md §0). The SNOMED CT codes are
carried here, not looked up in Slicer's terminology files, so that the engine, the tests (which run without
Slicer's terminology JSON) and the Slicer modules all agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass

ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
RIGHT = ("SCT", "24028007", "Right")
LEFT = ("SCT", "7771000", "Left")
GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
# The inferior vena cava and the portal vein are not in Slicer's General Anatomy list (5.6-5.10): an entry naming
# it for them points nowhere, and Slicer's terminology selector shows no match. The DICOM master list has both.
DICOM_MASTER = "Segmentation category and type - DICOM master list"


@dataclass(frozen=True)
class Organ:
    """One BTCV organ: label id, short key, display name, RGB colour (0-255), SNOMED CT type and modifier."""

    id: int
    key: str
    name: str
    color: tuple[int, int, int]
    snomed: tuple[str, str, str]
    modifier: tuple[str, str, str] | None = None
    context: str = GENERAL_ANATOMY  # the Slicer terminology list that holds this SNOMED CT type

    def terminology_entry(self) -> str:
        """The Slicer segment tag `TerminologyEntry` string for this organ (Slicer 5 format)."""
        code = lambda triple: "^".join(triple) if triple else "^^"  # noqa: E731
        return "~".join(
            [
                self.context,
                code(ANATOMICAL_STRUCTURE),
                code(self.snomed),
                code(self.modifier),
                "Anatomic codes - DICOM master list",
                "^^",
                "^^",
            ]
        )


ORGANS: tuple[Organ, ...] = (
    Organ(1, "spleen", "spleen", (157, 108, 162), ("SCT", "78961009", "Spleen")),
    Organ(2, "right_kidney", "right kidney", (185, 102, 83), ("SCT", "64033007", "Kidney"), RIGHT),
    Organ(3, "left_kidney", "left kidney", (214, 140, 110), ("SCT", "64033007", "Kidney"), LEFT),
    Organ(4, "gallbladder", "gallbladder", (60, 160, 70), ("SCT", "28231008", "Gallbladder")),
    Organ(5, "esophagus", "esophagus", (211, 171, 143), ("SCT", "32849002", "Esophagus")),
    Organ(6, "liver", "liver", (221, 130, 101), ("SCT", "10200004", "Liver")),
    Organ(7, "stomach", "stomach", (245, 160, 200), ("SCT", "69695003", "Stomach")),
    Organ(8, "aorta", "aorta", (224, 97, 76), ("SCT", "15825003", "Aorta")),
    Organ(9, "inferior_vena_cava", "inferior vena cava", (0, 151, 206), ("SCT", "64131007", "Inferior vena cava"),
          context=DICOM_MASTER),
    Organ(10, "portal_splenic_vein", "portal and splenic vein", (0, 112, 165), ("SCT", "32764006", "Portal vein"),
          context=DICOM_MASTER),
    Organ(11, "pancreas", "pancreas", (249, 180, 111), ("SCT", "15776009", "Pancreas")),
    Organ(12, "right_adrenal_gland", "right adrenal gland", (244, 214, 49), ("SCT", "23451007", "Adrenal gland"), RIGHT),
    Organ(13, "left_adrenal_gland", "left adrenal gland", (200, 170, 20), ("SCT", "23451007", "Adrenal gland"), LEFT),
)

BY_ID: dict[int, Organ] = {o.id: o for o in ORGANS}
BY_KEY: dict[str, Organ] = {o.key: o for o in ORGANS}
NUM_CLASSES = len(ORGANS) + 1  # background + 13 organs

# TotalSegmentator (v2) ids of the BTCV organs in the example files of ../shared/data (see its README).
TOTALSEGMENTATOR_TO_BTCV: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 15: 5, 5: 6, 6: 7, 52: 8, 63: 9, 64: 10, 7: 11, 8: 12, 9: 13}

# IRCAD mask folder name -> BTCV id. "artery" includes aortic branches and "venoussystem" the hepatic veins.
IRCAD_TO_BTCV: dict[str, int] = {
    "spleen": 1,
    "rightkidney": 2,
    "leftkidney": 3,
    "liver": 6,
    "artery": 8,
    "venoussystem": 9,
    "portalvein": 10,
}


def parse_organs(spec: str | None) -> list[int]:
    """Turn a user's organ list ("liver,spleen" or "6,1" or None for all) into sorted BTCV ids.

    Raises ValueError naming the unknown entry, so the CLI can print one clear sentence.
    """
    if spec is None or spec.strip() in ("", "all"):
        return [o.id for o in ORGANS]
    ids = set()
    for item in spec.split(","):
        item = item.strip().lower().replace(" ", "_").replace("-", "_")
        if item.isdigit() and int(item) in BY_ID:
            ids.add(int(item))
        elif item in BY_KEY:
            ids.add(BY_KEY[item].id)
        else:
            known = ", ".join(o.key for o in ORGANS)
            raise ValueError(f"unknown organ '{item}'; known organs are: {known} (or their ids 1-13)")
    return sorted(ids)
