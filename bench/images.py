"""Inkwell's image benchmark: `app.core.imaging.process` per worker process, beside Pillow's decode.

Generates two inputs in a temporary directory, deterministically (a seeded generator, no files
from outside): a 12-megapixel photo-like JPEG (4000x3000, quality 90, with an EXIF block) and a
2-megapixel PNG (1732x1155 RGB). For each it times Pillow's plain full decode
(`Image.open(path).load()`) and then `app.core.imaging.process(path, format, out_dir)`, the work one
worker process does per uploaded image minus the database round trips, each the median of
`--runs` runs in this one process after one unmeasured warm-up. Prints images/s per worker
process (1 / median process time) and the ratio of one process to one decode, and writes the
same figures to bench/results/images.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import PIL
from PIL import Image, ImageChops, ImageDraw, ImageFilter, features

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/images.py` puts bench/, not the root, on the path
    sys.path.insert(0, str(ROOT))

from app.core.imaging import process  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
SEED = 20240607
JPEG_SIZE = (4000, 3000)  # 12 MP, the size of a phone camera's photo
PNG_SIZE = (1732, 1155)  # 2 MP, a screenshot or an exported graphic
JPEG_QUALITY = 90


@dataclass(frozen=True, slots=True)
class Input:
    label: str
    format: str
    path: Path
    width: int
    height: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Row:
    input: str
    format: str
    width: int
    height: int
    megapixels: float
    file_bytes: int
    runs: int
    decode_ms: float
    decode_ms_min: float
    process_ms: float
    process_ms_min: float
    images_per_s_per_process: float
    ratio_to_decode: float
    variants: dict[str, list[int]]


# --------------------------------------------------------------------------- inputs


def _noise(rng: random.Random, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Uniform noise from a seeded generator (Pillow's effect_noise uses C's unseeded rand())."""
    bands = len(mode)
    return Image.frombytes(mode, size, rng.randbytes(size[0] * size[1] * bands))


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """A textured RGB image that compresses and decodes like a photograph, not like a flat
    colour: smooth colour fields at two scales, a lighting gradient, hard-edged shapes, and
    per-pixel grain."""
    rng = random.Random(seed)
    width, height = size
    # Large soft colour fields (sky, walls) and medium-scale texture (foliage, fabric).
    coarse = _noise(rng, (max(2, width // 400), max(2, height // 400))).resize(
        size, Image.Resampling.BICUBIC
    )
    medium = _noise(rng, (max(2, width // 24), max(2, height // 24))).resize(
        size, Image.Resampling.BICUBIC
    )
    image = Image.blend(coarse, medium, 0.35)
    # A diagonal lighting gradient.
    light = Image.linear_gradient("L").rotate(35, resample=Image.Resampling.BILINEAR, expand=True)
    light = light.resize(size, Image.Resampling.BILINEAR).convert("RGB")
    image = ImageChops.multiply(image, ImageChops.add(light, Image.new("RGB", size, "#666")))
    # Objects with sharp edges, slightly softened as a lens would.
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(width // 40, width // 6), rng.randrange(height // 40, height // 6)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
    for _ in range(120):
        points = [(rng.randrange(width), rng.randrange(height)) for _ in range(2)]
        draw.line(points, fill=(rng.randrange(256),) * 3, width=rng.randrange(1, 8))
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    # Sensor grain: about +-10 levels.
    return Image.blend(image, _noise(rng, size), 0.08)


def make_inputs(directory: Path) -> list[Input]:
    jpeg = directory / "photo-12mp.jpg"
    exif = Image.Exif()
    exif[0x010F] = "Inkwell Bench"  # Make
    exif[0x0110] = "Synthetic 12MP"  # Model
    exif[0x0112] = 1  # Orientation: upright, so `process` takes its draft-decode path
    exif[0x0131] = "bench/images.py"  # Software
    exif[0x0132] = "2024:06:07 12:00:00"  # DateTime
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}  # GPS IFD
    photo_like(JPEG_SIZE, SEED).save(
        jpeg, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes(), subsampling="4:2:0"
    )
    png = directory / "graphic-2mp.png"
    photo_like(PNG_SIZE, SEED + 1).save(png, "PNG")
    made = []
    for label, fmt, path in (("12 MP JPEG", "JPEG", jpeg), ("2 MP PNG", "PNG", png)):
        with Image.open(path) as im:
            made.append(Input(label, fmt, path, im.width, im.height, path.stat().st_size))
    return made


# --------------------------------------------------------------------------- timing


def decode(path: Path) -> None:
    with Image.open(path) as im:
        im.load()


def median_seconds(work: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, minimum) wall time of `work`, after one unmeasured warm-up; the collector runs
    between runs, not during them."""
    work()
    times = []
    for _ in range(runs):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return statistics.median(times), min(times)


def measure(item: Input, runs: int, out_dir: Path) -> Row:
    decode_s, decode_min = median_seconds(lambda: decode(item.path), runs)
    target = out_dir / item.path.stem
    process_s, process_min = median_seconds(lambda: process(item.path, item.format, target), runs)
    variants = process(item.path, item.format, target)
    return Row(
        input=item.label,
        format=item.format,
        width=item.width,
        height=item.height,
        megapixels=round(item.width * item.height / 1e6, 2),
        file_bytes=item.bytes,
        runs=runs,
        decode_ms=round(decode_s * 1000, 2),
        decode_ms_min=round(decode_min * 1000, 2),
        process_ms=round(process_s * 1000, 2),
        process_ms_min=round(process_min * 1000, 2),
        images_per_s_per_process=round(1 / process_s, 2),
        ratio_to_decode=round(process_s / decode_s, 2),
        variants={v.name: [v.width, v.height, v.bytes] for v in variants},
    )


# --------------------------------------------------------------------------- report


def environment(runs: int) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pillow": PIL.__version__,
        "libjpeg": features.version("jpg"),
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "libwebp": features.version("webp"),
        "zlib": features.version("zlib"),
        "zlib_ng": features.version("zlib_ng"),
        "runs": runs,
    }


def table(rows: list[Row]) -> str:
    header = (
        "input", "size", "file", "decode ms", "process ms", "images/s/process", "x one decode"
    )  # fmt: skip
    lines = [
        (
            row.input,
            f"{row.width}x{row.height}",
            f"{row.file_bytes / 1e6:.1f} MB",
            f"{row.decode_ms:.1f}",
            f"{row.process_ms:.1f}",
            f"{row.images_per_s_per_process:.2f}",
            f"{row.ratio_to_decode:.2f}x",
        )
        for row in rows
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=True)]
    out = []
    for i, line in enumerate([header, *lines]):
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in pairs]
        out.append("  ".join(cells))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="app.core.imaging.process per worker process, beside Pillow's plain decode.",
    )
    parser.add_argument("--runs", type=int, default=7, help="measured runs per figure (median)")
    parser.add_argument("--quick", action="store_true", help="3 runs per figure")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "images.json")
    options = parser.parse_args(argv)
    if options.quick:
        options.runs = 3
    if options.runs < 1:
        parser.error("--runs must be at least 1")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    env = environment(options.runs)
    with tempfile.TemporaryDirectory(prefix="inkwell-images-") as tmp:
        workdir = Path(tmp)
        print("generating inputs...", file=sys.stderr, flush=True)
        inputs = make_inputs(workdir)
        rows = []
        for item in inputs:
            print(f"measuring {item.label}...", file=sys.stderr, flush=True)
            rows.append(measure(item, options.runs, workdir / "out"))
    report = {"started_at": started_at, "environment": env, "results": [asdict(r) for r in rows]}
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(
        f"Inkwell image benchmark, {started_at}: app.core.imaging.process in one process, "
        f"median of {options.runs} runs, Pillow {env['pillow']}, libjpeg-turbo "
        f"{env['libjpeg_turbo']}, libwebp {env['libwebp']}, Python {env['python']}"
    )
    print()
    print(table(rows))
    print()
    print(
        "decode ms: Image.open(path).load(), full size. process ms: app.core.imaging.process, the"
    )
    print("cleaned original and the large, medium and thumb WebP variants written to disk.")
    print("images/s/process = 1 / process ms; x one decode = process ms / decode ms.")
    print()
    print(f"JSON: {options.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
