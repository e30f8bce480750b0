"""TotalSegmentator's 117 structures: their ids, the tissue each is made of, and reading a `segmentations/` folder.

The BTCV ids (organs.py) are what a model predicts. Training also needs to know what the *other* voxels are:
contrast enhances arteries, veins and organs differently in each phase (METHODS §1, DCC-CL), and a CT can be
painted from a label map alone (SynthSeg-style synthetic CTs) only if every structure's tissue is known. The
TotalSegmentator v2 "total" task ids are that vocabulary here: its label maps carry them, its dataset ships
one mask per structure named as below, and a BTCV label map maps into them (`BTCV_TO_TS`).
"""

from __future__ import annotations

import numpy as np

from .organs import TOTALSEGMENTATOR_TO_BTCV

_NAMES = (
    "spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right adrenal_gland_left "
    "lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right "
    "esophagus trachea thyroid_gland small_bowel duodenum colon urinary_bladder prostate kidney_cyst_left "
    "kidney_cyst_right sacrum vertebrae_S1 vertebrae_L5 vertebrae_L4 vertebrae_L3 vertebrae_L2 vertebrae_L1 "
    "vertebrae_T12 vertebrae_T11 vertebrae_T10 vertebrae_T9 vertebrae_T8 vertebrae_T7 vertebrae_T6 vertebrae_T5 "
    "vertebrae_T4 vertebrae_T3 vertebrae_T2 vertebrae_T1 vertebrae_C7 vertebrae_C6 vertebrae_C5 vertebrae_C4 "
    "vertebrae_C3 vertebrae_C2 vertebrae_C1 heart aorta pulmonary_vein brachiocephalic_trunk subclavian_artery_right "
    "subclavian_artery_left common_carotid_artery_right common_carotid_artery_left brachiocephalic_vein_left "
    "brachiocephalic_vein_right atrial_appendage_left superior_vena_cava inferior_vena_cava "
    "portal_vein_and_splenic_vein iliac_artery_left iliac_artery_right iliac_vena_left iliac_vena_right "
    "humerus_left humerus_right scapula_left scapula_right clavicula_left clavicula_right femur_left femur_right "
    "hip_left hip_right spinal_cord gluteus_maximus_left gluteus_maximus_right gluteus_medius_left "
    "gluteus_medius_right gluteus_minimus_left gluteus_minimus_right autochthon_left autochthon_right "
    "iliopsoas_left iliopsoas_right brain skull"
).split()
_NAMES += [f"rib_left_{i}" for i in range(1, 13)] + [f"rib_right_{i}" for i in range(1, 13)]
_NAMES += ["sternum", "costal_cartilages"]

TS_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(_NAMES)}  # TotalSegmentator v2 "total" ids 1..117
TS_NAMES: dict[int, str] = {i: n for n, i in TS_IDS.items()}
BTCV_TO_TS: dict[int, int] = {b: t for t, b in TOTALSEGMENTATOR_TO_BTCV.items()}

# Two ids beyond TotalSegmentator's, for a label map that also says where the body is: soft tissue no structure
# claims (fat, abdominal wall, mesentery) and air outside the body. Painting a CT needs both.
BODY = 250
OUTSIDE = 0


def _ids(*prefixes: str) -> tuple[int, ...]:
    return tuple(i for n, i in TS_IDS.items() if n.startswith(prefixes))


# What each structure is made of, for painting and for contrast phases (phases.py).
TISSUE: dict[str, tuple[int, ...]] = {
    "spleen": (1,), "kidney": (2, 3), "gallbladder": (4,), "liver": (5,), "stomach": (6,), "pancreas": (7,),
    "adrenal": (8, 9), "esophagus": (15,), "lung": _ids("lung_"), "airway": (16,), "thyroid": (17,),
    "bowel": (18, 19, 20), "bladder": (21,), "prostate": (22,), "cyst": (23, 24),
    "bone": _ids("sacrum", "vertebrae_", "humerus", "scapula", "clavicula", "femur", "hip", "skull", "rib_", "sternum"),
    "cartilage": (117,), "heart": (51, 61), "artery": _ids("aorta", "brachiocephalic_trunk", "subclavian", "common_carotid", "iliac_artery"),
    "vein": _ids("brachiocephalic_vein", "superior_vena_cava", "inferior_vena_cava", "iliac_vena", "pulmonary_vein"),
    "portal": (64,), "muscle": _ids("gluteus", "autochthon", "iliopsoas"), "cord": (79,), "brain": (90,),
    "body": (BODY,),
}
TISSUE_OF = np.zeros(256, dtype=np.uint8)  # structure id -> index into TISSUE_NAMES (0: outside the body)
TISSUE_NAMES = ("outside", *TISSUE)
for _k, _name in enumerate(TISSUE_NAMES[1:], start=1):
    TISSUE_OF[list(TISSUE[_name])] = _k


def btcv_to_ts(labels: np.ndarray) -> np.ndarray:
    """A BTCV label map in TotalSegmentator ids (a corrected case knows only its organs; the rest is 0)."""
    lut = np.zeros(256, dtype=np.uint8)
    for b, t in BTCV_TO_TS.items():
        lut[b] = t
    return lut[labels]


def ts_to_btcv(structures: np.ndarray) -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for t, b in TOTALSEGMENTATOR_TO_BTCV.items():
        lut[t] = b
    return lut[structures]
