"""Builders for DICOM tests: image series written slice by slice with pydicom from a NIfTI volume."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_series_from_nifti(img: nib.Nifti1Image, folder: Path, *, tags: dict | None = None, drop: tuple[int, ...] = (), seed: int = 0) -> list[Path]:
    """Write one DICOM file per k-slice of ``img`` (shuffled random names), geometry from its affine."""
    folder.mkdir(parents=True, exist_ok=True)
    data = np.asarray(img.dataobj)
    lps = LPS @ img.affine
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    col_spacing, row_spacing = np.linalg.norm(col_step), np.linalg.norm(row_step)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    names = [f"{random.Random(seed + k).getrandbits(40):x}" for k in range(data.shape[2])]
    for k in range(data.shape[2]):
        if k in drop:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID, series_uid
        ds.Modality = "MR"
        ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.StudyID, ds.SeriesNumber = study_uid, frame_uid, "1", 1
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.PatientSex = "20200101", "120000", "", "", "F"
        ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.10f}"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "MRN-12345", "19700101"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in (*(col_step / col_spacing), *(row_step / row_spacing))]
        ds.ImagePositionPatient = [f"{v:.10f}" for v in (lps[:3, :3] @ np.array([0, 0, k]) + lps[:3, 3])]
        ds.PixelSpacing = [f"{row_spacing:.10f}", f"{col_spacing:.10f}"]
        pixels = np.ascontiguousarray(data[:, :, k].T.astype(np.uint16))  # rows = j, columns = i
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        for key, value in (tags or {}).items():
            setattr(ds, key, value)
        ds.save_as(folder / names[k], enforce_file_format=True)
    return sorted(p for p in folder.iterdir() if p.is_file())


def read_series_datasets(paths: list[Path]) -> list[pydicom.Dataset]:
    """The slices as pydicom datasets in slice order (InstanceNumber)."""
    return sorted((pydicom.dcmread(p) for p in paths), key=lambda d: int(d.InstanceNumber))
