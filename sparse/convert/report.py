"""The conversion report: per tensor and total counts, calibration errors, a terminal table, JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class TensorReport:
    """One converted tensor. Densities are non-zero fractions; magnitudes are sums of |w|."""
    name: str
    shape: list[int]
    dtype: str
    numel: int
    nnz_before: int
    nnz_after: int
    kept_nonzero: int          # original non-zeros still non-zero (before calibration)
    newly_zeroed: int          # original non-zeros the pattern removed
    abs_before: float
    abs_kept: float
    calibrated: bool = False
    created_nonzero: int = 0   # zeros made non-zero (only calibration may do this)

    @property
    def density_before(self) -> float:
        return self.nnz_before / self.numel if self.numel else 0.0

    @property
    def density_after(self) -> float:
        return self.nnz_after / self.numel if self.numel else 0.0

    @property
    def kept_nonzero_fraction(self) -> float:
        return self.kept_nonzero / self.nnz_before if self.nnz_before else 1.0

    @property
    def kept_magnitude_ratio(self) -> float:
        return self.abs_kept / self.abs_before if self.abs_before else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(density_before=self.density_before, density_after=self.density_after,
                 kept_nonzero_fraction=self.kept_nonzero_fraction, kept_magnitude_ratio=self.kept_magnitude_ratio)
        return d


@dataclass
class LayerCalibration:
    """Calibration result for one layer: relative output error ||Y_pruned - Y_dense|| / ||Y_dense|| on
    the layer's calibration inputs (in sequential calibration, the inputs the already-pruned
    earlier blocks produce)."""
    name: str
    error_before: float  # the plain conversion's magnitude mask applied, nothing fitted
    error_after: float   # after calibration (AdaPrune fit, SparseGPT mask + OBS update, Wanda mask)
    tokens: int
    bias_updated: bool
    method: str = "adaprune"
    sequential: bool = False


@dataclass
class ConvertReport:
    src: str
    dst: str
    pattern: str
    transposable: bool
    method: str
    tensors: list[TensorReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # selected by name but not convertible
    untouched: int = 0                                       # tensors copied bit-identically
    calibration: list[LayerCalibration] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0

    def totals(self) -> dict:
        numel = sum(t.numel for t in self.tensors)
        before = sum(t.nnz_before for t in self.tensors)
        after = sum(t.nnz_after for t in self.tensors)
        kept = sum(t.kept_nonzero for t in self.tensors)
        ab = sum(t.abs_before for t in self.tensors)
        ak = sum(t.abs_kept for t in self.tensors)
        out = {
            "converted_tensors": len(self.tensors), "skipped_tensors": len(self.skipped),
            "untouched_tensors": self.untouched, "numel": numel,
            "density_before": before / numel if numel else 0.0, "density_after": after / numel if numel else 0.0,
            "kept_nonzero_fraction": kept / before if before else 1.0,
            "kept_magnitude_ratio": ak / ab if ab else 1.0,
            "newly_zeroed": sum(t.newly_zeroed for t in self.tensors),
            "created_nonzero": sum(t.created_nonzero for t in self.tensors),
            "bytes_read": self.bytes_read, "seconds": self.seconds,
            "throughput_mb_s": self.bytes_read / 1e6 / self.seconds if self.seconds > 0 else None,
        }
        if self.calibration:
            n = len(self.calibration)
            out["calibration_mean_error_before"] = sum(c.error_before for c in self.calibration) / n
            out["calibration_mean_error_after"] = sum(c.error_after for c in self.calibration) / n
        return out

    def to_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "pattern": self.pattern, "transposable": self.transposable,
                "method": self.method, "totals": self.totals(), "tensors": [t.to_dict() for t in self.tensors],
                "skipped": dict(self.skipped), "calibration": [asdict(c) for c in self.calibration]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def table(self) -> str:
        """Fixed-width terminal table: one row per converted tensor, then totals."""
        calib = {c.name: c for c in self.calibration}
        head = f"{'tensor':<52} {'shape':>12} {'dens.before':>11} {'dens.after':>10} {'nz kept':>8} " \
               f"{'|w| kept':>8} {'new zeros':>10}"
        if calib:
            head += f" {'err before':>10} {'err after':>9}"
        lines = [head, "-" * len(head)]
        for t in self.tensors:
            shape = "x".join(str(s) for s in t.shape)
            row = (f"{t.name[-52:]:<52} {shape:>12} {t.density_before:>11.4f} {t.density_after:>10.4f} "
                   f"{t.kept_nonzero_fraction:>8.4f} {t.kept_magnitude_ratio:>8.4f} {t.newly_zeroed:>10d}")
            c = calib.get(t.name)
            if c is not None:
                row += f" {c.error_before:>10.4f} {c.error_after:>9.4f}"
            lines.append(row)
        tot = self.totals()
        lines.append("-" * len(head))
        row = (f"{'TOTAL (' + str(len(self.tensors)) + ' tensors)':<52} {'':>12} {tot['density_before']:>11.4f} "
               f"{tot['density_after']:>10.4f} {tot['kept_nonzero_fraction']:>8.4f} "
               f"{tot['kept_magnitude_ratio']:>8.4f} {tot['newly_zeroed']:>10d}")
        if calib:
            row += f" {tot['calibration_mean_error_before']:>10.4f} {tot['calibration_mean_error_after']:>9.4f}"
        lines.append(row)
        for name, why in self.skipped.items():
            lines.append(f"skipped {name}: {why}")
        thr = tot["throughput_mb_s"]
        lines.append(f"{self.untouched} other tensors copied unchanged; {tot['bytes_read'] / 1e6:.1f} MB in "
                     f"{self.seconds:.2f} s" + (f" ({thr:.0f} MB/s)" if thr else ""))
        return "\n".join(lines)
