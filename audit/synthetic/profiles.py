"""Site acquisition profiles, metadata dialects and the effects a synthetic cohort can plant.

A :class:`SiteProfile` says how one site acquires and stores a sagittal T2-weighted cervical
spine MRI: vendor strings as the scanner writes them, field strength (raw and in tesla),
intensity scale, tissue contrast, bias field, noise, voxel grid, orientation and the way the
site writes demographic metadata (:class:`MetadataDialect`).

:class:`PlantedEffects` says which known disparities a cohort carries: a *hard site* (lower SNR,
stronger bias field, reduced tissue contrast) and an *age effect* (thinner, darker discs with
age). The hard-site degradation is applied by :meth:`PlantedEffects.site_profile` at generation
time, so the same profiles serve a planted and a null cohort.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from audit.synthetic.dialect import MetadataDialect, site_columns

logger = logging.getLogger(__name__)

__all__ = [
    "TISSUES",
    "NOISE_AT_1T",
    "MetadataDialect",
    "SiteProfile",
    "PlantedEffects",
    "DEFAULT_SITES",
    "HARD_SITE",
    "null_sites",
    "training_sites",
    "noise_sigma_for_field",
    "profile_from_dict",
]

#: Tissue classes of the phantom (index = tissue code in ``SyntheticCase.tissue``).
TISSUES: tuple[str, ...] = ("air", "soft", "bone", "body", "disc", "csf", "cord", "fat")

#: Noise standard deviation, relative to the CSF signal, of a 1 T scanner; it scales as 1/B0.
NOISE_AT_1T = 0.06

_ORIENT_LETTERS = ({"L", "R"}, {"A", "P"}, {"S", "I"})


def noise_sigma_for_field(field_strength_t: float, coil_factor: float = 1.0) -> float:
    """Noise sigma relative to the CSF signal: ``NOISE_AT_1T / B0 * coil_factor`` (SNR grows with B0).

    >>> round(noise_sigma_for_field(1.5) / noise_sigma_for_field(3.0), 6)
    2.0
    """
    if not field_strength_t > 0:
        raise ValueError(f"field_strength_t must be > 0 tesla; got {field_strength_t!r}")
    return NOISE_AT_1T / float(field_strength_t) * float(coil_factor)


@dataclasses.dataclass(frozen=True)
class SiteProfile:
    """Acquisition and storage conventions of one synthetic site.

    Parameters
    ----------
    name : str
        Site name (``site`` column, folder name, case_id prefix).
    vendor_raw, scanner_model : str
        Manufacturer and model strings as the scanner writes them (``"SIEMENS"``, ``"Prisma"``).
    field_strength_raw : int, float or str
        Field strength as the site stores it (``3``, ``"3.0T"``, ``1.494``, ``15000`` gauss).
    field_strength_t : float
        Field strength in tesla (truth).
    intensity_scale, intensity_offset : float
        Stored value = scale * signal + offset, where CSF signal is 1 before bias and noise.
    tissue_multipliers : tuple of (tissue, factor) pairs
        Vendor/sequence-specific multipliers of the base tissue intensities (see :data:`TISSUES`).
    contrast : float
        Compression of tissue intensities toward soft tissue (1 = nominal, < 1 = less contrast).
    bias_strength : float
        Amplitude of the smooth multiplicative bias field (log scale; 0 = none).
    noise_sigma : float or None
        Noise sigma relative to CSF signal; ``None`` derives it from the field strength
        (:func:`noise_sigma_for_field` with ``coil_noise_factor``).
    coil_noise_factor : float
        Multiplier of the field-derived noise (coil and sequence).
    inplane_spacing_mm : float
        Pixel size in the sagittal plane (A-P and S-I).
    slice_thickness_mm : float
        Slice thickness = slice spacing (left-right).
    n_slices : int
        Number of sagittal slices.
    fov_ap_mm, fov_si_mm : float
        Field of view in the sagittal plane.
    axcodes : str
        Orientation of the stored array (nibabel axis codes, e.g. ``"PIR"``, ``"RAS"``, ``"LPS"``).
    dtype : {"int16", "uint16"}
        Stored image dtype.
    dialect : MetadataDialect
        How the site writes its metadata table.
    """

    name: str
    vendor_raw: str
    scanner_model: str
    field_strength_raw: Any
    field_strength_t: float
    intensity_scale: float = 1000.0
    intensity_offset: float = 0.0
    tissue_multipliers: tuple[tuple[str, float], ...] = ()
    contrast: float = 1.0
    bias_strength: float = 0.15
    noise_sigma: float | None = None
    coil_noise_factor: float = 1.0
    inplane_spacing_mm: float = 1.0
    slice_thickness_mm: float = 3.0
    n_slices: int = 14
    fov_ap_mm: float = 92.0
    fov_si_mm: float = 134.0
    axcodes: str = "PIR"
    dtype: str = "int16"
    dialect: MetadataDialect = dataclasses.field(default_factory=lambda: MetadataDialect(columns=site_columns()))

    def __post_init__(self) -> None:
        if self.noise_sigma is None:
            object.__setattr__(self, "noise_sigma", noise_sigma_for_field(self.field_strength_t, self.coil_noise_factor))
        codes = str(self.axcodes).upper()
        if len(codes) != 3 or any(sum(c in group for c in codes) != 1 for group in _ORIENT_LETTERS):
            raise ValueError(f"SiteProfile.axcodes must name one of L/R, A/P, S/I each (e.g. 'PIR'); got {self.axcodes!r}")
        object.__setattr__(self, "axcodes", codes)
        if self.dtype not in ("int16", "uint16"):
            raise ValueError(f"SiteProfile.dtype must be 'int16' or 'uint16'; got {self.dtype!r}")
        unknown = {t for t, _ in self.tissue_multipliers} - set(TISSUES)
        if unknown:
            raise ValueError(f"SiteProfile.tissue_multipliers: tissues must be in {TISSUES}; got {sorted(unknown)}")
        for field in ("inplane_spacing_mm", "slice_thickness_mm", "intensity_scale", "contrast", "fov_ap_mm", "fov_si_mm"):
            if not getattr(self, field) > 0:
                raise ValueError(f"SiteProfile.{field} must be > 0; got {getattr(self, field)!r}")
        if int(self.n_slices) < 1:
            raise ValueError(f"SiteProfile.n_slices must be >= 1; got {self.n_slices!r}")

    def multiplier(self, tissue: str) -> float:
        """Intensity multiplier of ``tissue`` (1 when not listed)."""
        return dict(self.tissue_multipliers).get(tissue, 1.0)

    @property
    def shape_ras(self) -> tuple[int, int, int]:
        """Array shape in R-A-S axis order (slices, A-P, S-I)."""
        return (
            int(self.n_slices),
            int(round(self.fov_ap_mm / self.inplane_spacing_mm)),
            int(round(self.fov_si_mm / self.inplane_spacing_mm)),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (for ``cohort.json``)."""
        out = dataclasses.asdict(self)
        out["tissue_multipliers"] = dict(self.tissue_multipliers)
        out["dialect"]["columns"] = dict(self.dialect.columns)
        out["dialect"]["sex_values"] = dict(self.dialect.sex_values)
        return out


HARD_SITE = "site-D"

#: Four sites, three vendors, 1.5 T and 3 T. ``site-D`` (Philips 1.5 T, thick slices) is the site that
#: :class:`PlantedEffects` degrades by default.
DEFAULT_SITES: tuple[SiteProfile, ...] = (
    SiteProfile(
        name="site-A",
        vendor_raw="SIEMENS",
        scanner_model="Prisma",
        field_strength_raw=3,
        field_strength_t=3.0,
        intensity_scale=650.0,
        tissue_multipliers=(("fat", 1.05), ("body", 0.95)),
        bias_strength=0.12,
        inplane_spacing_mm=0.95,
        slice_thickness_mm=3.0,
        n_slices=14,
        axcodes="PIR",
        dtype="int16",
        dialect=MetadataDialect(
            columns=site_columns(vendor="Manufacturer", scanner_model="ManufacturerModelName", field_strength="MagneticFieldStrength",
                          age="PatientAge", sex="PatientSex"),
            age_format="dicom",
            missing="",
        ),
    ),
    SiteProfile(
        name="site-B",
        vendor_raw="GE MEDICAL SYSTEMS",
        scanner_model="SIGNA Premier",
        field_strength_raw=30000,
        field_strength_t=3.0,
        intensity_scale=2600.0,
        tissue_multipliers=(("fat", 1.15), ("cord", 1.05)),
        bias_strength=0.15,
        inplane_spacing_mm=1.0,
        slice_thickness_mm=3.0,
        n_slices=14,
        axcodes="RAS",
        dtype="int16",
        dialect=MetadataDialect(
            columns=site_columns(),
            sex_values=(("F", "Female"), ("M", "Male")),
            age_format="int",
            redact_over_89=True,
            redacted_token=">89",
            missing="Not Reported",
        ),
    ),
    SiteProfile(
        name="site-C",
        vendor_raw="Siemens Healthineers",
        scanner_model="MAGNETOM Aera",
        field_strength_raw=1.494,
        field_strength_t=1.494,
        intensity_scale=800.0,
        tissue_multipliers=(("disc", 1.05),),
        bias_strength=0.18,
        inplane_spacing_mm=1.05,
        slice_thickness_mm=3.0,
        n_slices=14,
        axcodes="PSR",
        dtype="int16",
        dialect=MetadataDialect(
            columns=site_columns(age="age_years", sex="gender"),
            sex_values=(("F", "female"), ("M", "male")),
            age_format="float",
            missing="",
        ),
    ),
    SiteProfile(
        name=HARD_SITE,
        vendor_raw="Philips Medical Systems",
        scanner_model="Ingenia",
        field_strength_raw="1.5T",
        field_strength_t=1.5,
        intensity_scale=1300.0,
        intensity_offset=20.0,
        tissue_multipliers=(("fat", 0.9), ("csf", 0.95)),
        bias_strength=0.2,
        inplane_spacing_mm=1.15,
        slice_thickness_mm=4.0,
        n_slices=12,
        axcodes="LPS",
        dtype="uint16",
        dialect=MetadataDialect(
            columns=site_columns(case_id="exam_id", patient_id="subject", age="PatientAge", sex="PatientSex"),
            sex_values=(("F", "F"), ("M", "M")),
            age_format="dicom",
            redact_over_89=True,
            redacted_token="90+",
            missing="Unknown",
        ),
    ),
)


def null_sites(sites: Sequence[SiteProfile] = DEFAULT_SITES) -> tuple[SiteProfile, ...]:
    """Sites with identical acquisition quality, for a null cohort.

    Vendor strings, field strengths (as metadata), intensity scale, orientation and metadata dialect
    stay site-specific, so adapters and harmonization are still exercised; everything that changes
    image difficulty (noise, bias field, contrast, tissue multipliers, voxel grid) is set to the
    values of a 3 T site.
    """
    common = dict(
        tissue_multipliers=(),
        contrast=1.0,
        bias_strength=0.15,
        noise_sigma=noise_sigma_for_field(3.0),
        coil_noise_factor=1.0,
        inplane_spacing_mm=1.0,
        slice_thickness_mm=3.0,
        n_slices=14,
        fov_ap_mm=92.0,
        fov_si_mm=134.0,
    )
    return tuple(dataclasses.replace(s, **common) for s in sites)


def training_sites(hard_site: str | None = HARD_SITE, sites: Sequence[SiteProfile] = DEFAULT_SITES) -> tuple[SiteProfile, ...]:
    """The sites a demo model is trained on: all but ``hard_site``, so the hard site stays unseen."""
    return tuple(s for s in sites if s.name != hard_site)


@dataclasses.dataclass(frozen=True)
class PlantedEffects:
    """Known disparities planted in a synthetic cohort.

    Parameters
    ----------
    hard_site : str or None
        Name of the site whose images are degraded (noise x ``hard_noise_factor``, bias field
        ``hard_bias_strength``, tissue contrast x ``hard_contrast_factor``); ``None`` for none.
    age_effect : bool
        Discs get thinner (``disc_loss_mm_per_year`` after 30) and darker with age. When False,
        every patient gets the discs of a ``reference_age`` patient, whatever the age.
    hard_noise_factor, hard_bias_strength, hard_contrast_factor : float
        Strength of the hard-site degradation.
    disc_loss_mm_per_year : float
        Disc height lost per year of age after 30.
    disc_signal_loss_per_year : float
        Fraction of the young nucleus signal lost per year after 30 (floored at 25 %).
    reference_age : float
        Age whose discs everyone gets when ``age_effect`` is False (CSpineSeg mean age).
    """

    hard_site: str | None = HARD_SITE
    age_effect: bool = True
    hard_noise_factor: float = 2.5
    hard_bias_strength: float = 0.55
    hard_contrast_factor: float = 0.6
    disc_loss_mm_per_year: float = 0.03
    disc_signal_loss_per_year: float = 0.017
    reference_age: float = 54.5

    def __post_init__(self) -> None:
        if self.hard_noise_factor < 1 or not 0 < self.hard_contrast_factor <= 1 or self.hard_bias_strength < 0:
            raise ValueError(
                "PlantedEffects: hard_noise_factor must be >= 1, hard_contrast_factor in (0, 1], hard_bias_strength >= 0; "
                f"got {self.hard_noise_factor!r}, {self.hard_contrast_factor!r}, {self.hard_bias_strength!r}"
            )

    @classmethod
    def none(cls) -> PlantedEffects:
        """No planted effect: no hard site, no age effect."""
        return cls(hard_site=None, age_effect=False)

    def site_profile(self, profile: SiteProfile) -> SiteProfile:
        """The profile as acquired in this cohort (degraded when it is the hard site)."""
        if profile.name != self.hard_site:
            return profile
        return dataclasses.replace(
            profile,
            noise_sigma=float(profile.noise_sigma) * self.hard_noise_factor,
            bias_strength=max(profile.bias_strength, self.hard_bias_strength),
            contrast=profile.contrast * self.hard_contrast_factor,
        )

    def check_sites(self, sites: Sequence[SiteProfile]) -> None:
        """Raise if ``hard_site`` names no site of ``sites``."""
        names = [s.name for s in sites]
        if self.hard_site is not None and self.hard_site not in names:
            raise ValueError(f"PlantedEffects.hard_site must be None or one of {names}; got {self.hard_site!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable description."""
        return dataclasses.asdict(self)


def profile_from_dict(data: Mapping[str, Any]) -> SiteProfile:
    """Rebuild a :class:`SiteProfile` from :meth:`SiteProfile.as_dict` output (e.g. read from cohort.json)."""
    d = dict(data)
    dialect = dict(d.pop("dialect"))
    dialect["columns"] = tuple(dict(dialect["columns"]).items())
    dialect["sex_values"] = tuple(dict(dialect["sex_values"]).items())
    d["tissue_multipliers"] = tuple(dict(d.get("tissue_multipliers", {})).items())
    return SiteProfile(dialect=MetadataDialect(**dialect), **d)
