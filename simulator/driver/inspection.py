"""The table ``smg-sim data inspect`` prints: each site's statistics and the problems found."""

from __future__ import annotations


def _span(stats: dict, key: str) -> str:
    lo, hi = int(stats[f"{key}_min"]), int(stats[f"{key}_max"])
    return str(lo) if lo == hi else f"{lo}-{hi}"


def print_inspection(cfg, report: dict[str, tuple[dict, list[str]]]) -> int:
    """Print the per-site statistics and every problem found; returns how many problems."""
    print(
        f"benchmark {cfg.data.benchmark} (target {cfg.data.target}, images resized to "
        f"{cfg.data.image_size} px)"
    )
    cols = [
        ("cases_train", "train cases", "{:.0f}"),
        ("cases_test", "test cases", "{:.0f}"),
        ("slices", "slices", "{:.0f}"),
        ("channels", "ch", "{:.0f}"),
        ("raw_height_min", "size as read (HxW)", None),
        ("intensity_mean", "mean", "{:.3f}"),
        ("intensity_std", "std", "{:.3f}"),
        ("intensity_p01", "p1", "{:.3f}"),
        ("intensity_p99", "p99", "{:.3f}"),
        ("foreground_fraction", "fg", "{:.3f}"),
        ("empty_masks", "empty", "{:.0f}"),
        ("problems", "problems", "{:.0f}"),
    ]
    rows = []
    for site, (stats, _) in report.items():
        row = [site]
        for key, _, fmt in cols:
            if key == "raw_height_min":
                if "raw_height_min" in stats:
                    row.append(f"{_span(stats, 'raw_height')}x{_span(stats, 'raw_width')}")
                else:
                    row.append(
                        f"{stats['height']:.0f}x{stats['width']:.0f}" if "height" in stats else "-"
                    )
            else:
                row.append(fmt.format(stats[key]) if key in stats else "-")
        rows.append(row)
    header = ["site", *(c[1] for c in cols)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print(
            "  ".join(
                str(v).rjust(w) if i else str(v).ljust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    n_problems = 0
    for site, (stats, problems) in report.items():
        total = int(stats.get("problems", len(problems)))
        n_problems += total
        for p in problems:
            print(f"{site}: problem: {p}")
        if total > len(problems):
            print(f"{site}: ... and {total - len(problems)} more problems")
    print("no problems found" if not n_problems else f"{n_problems} problems found")
    return n_problems
