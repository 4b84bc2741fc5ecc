"""Visualisation with numpy + OpenCV only (no matplotlib on edge devices).

All functions take and return RGB uint8 images (project convention); the
RGB<->BGR swap for OpenCV happens only inside `write_png` and the colormap.

Overlays show heat only where it matters: each pixel's heat opacity grows with its value
(transparent below HEAT_FROM of the colour range, full `alpha` from HEAT_FULL up), so an OK
part stays visible as itself instead of tinted blue; `with_colorbar` adds the scale.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .atomic import atomic_path

log = logging.getLogger(__name__)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
OK_COLOR = (40, 150, 60)     # RGB bar colour for a normal verdict
NG_COLOR = (200, 40, 40)     # RGB bar colour for an anomalous verdict
NEUTRAL_COLOR = (30, 30, 30)
GT_COLOR = (255, 255, 255)   # ground-truth defect outline
# Heat opacity ramp, as fractions of the colour range: for normalised maps (0..1, threshold 0.5)
# heat starts at 0.2 and is fully opaque from 0.7; at the threshold it has 60% of `alpha`.
HEAT_FROM, HEAT_FULL = 0.2, 0.7


def _as_rgb(img: np.ndarray, name: str = "image") -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 numpy array, got "
                         f"{type(img).__name__}{'' if not isinstance(img, np.ndarray) else ' ' + str(img.dtype)}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{name}: expected HxW or HxWx3, got shape {img.shape}")
    return np.ascontiguousarray(img)


def _as_map(amap: np.ndarray, name: str = "amap") -> np.ndarray:
    a = np.asarray(amap)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name}: expected an HxW map, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name}: must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN/inf")
    return a


def _unit(a: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    """The map scaled to [0, 1] over [vmin, vmax] (defaults: its own range), clipped."""
    lo = float(a.min()) if vmin is None else float(vmin)
    hi = float(a.max()) if vmax is None else float(vmax)
    if hi < lo:
        raise ValueError(f"vmax ({hi}) < vmin ({lo})")
    # A constant map (hi == lo) is drawn all-low rather than dividing by zero.
    return np.zeros_like(a) if hi == lo else np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def _jet(unit: np.ndarray) -> np.ndarray:
    u8 = np.rint(unit * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def colorize(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """HxW map -> HxWx3 RGB uint8 with the JET colormap (vmin blue, vmax red)."""
    return _jet(_unit(_as_map(amap), vmin, vmax))


def overlay(image_rgb: np.ndarray, amap: np.ndarray, vmin: float | None = None, vmax: float | None = None,
            alpha: float = 0.5, mask: np.ndarray | None = None, threshold: float | None = None,
            contour_color: tuple[int, int, int] = GT_COLOR, alpha_by_value: bool = True) -> np.ndarray:
    """Blend a JET heatmap of `amap` over the image; returns RGB uint8 of the image's size.

    The map is resized (bilinear) to the image if sizes differ.  vmin/vmax
    default to the map's own range, which makes every map look "hot" somewhere:
    for normalised maps pass vmin=0, vmax=1 so normal images stay clean.
    alpha_by_value: per-pixel opacity alpha * ramp(HEAT_FROM..HEAT_FULL of the range), so low
    values leave the image untouched; False blends `alpha` everywhere.
    Contours: of `mask` (bool HxW, e.g. ground truth) and/or of amap >= threshold
    (in the map's units).
    """
    img = _as_rgb(image_rgb, "image_rgb")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = _as_map(amap)
    h, w = img.shape[:2]
    if a.shape != (h, w):
        a = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
    unit = _unit(a, vmin, vmax)
    heat = _jet(unit)
    if alpha_by_value:
        w_px = alpha * np.clip((unit - HEAT_FROM) / (HEAT_FULL - HEAT_FROM), 0.0, 1.0)[:, :, None]
        out = np.rint(img * (1.0 - w_px) + heat * w_px).astype(np.uint8)
    else:
        out = cv2.addWeighted(img, 1.0 - alpha, heat, alpha, 0.0)
    thickness = max(1, round(min(h, w) / 200))
    if threshold is not None:
        _draw_contour(out, a >= threshold, contour_color, thickness)
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim != 2:
            raise ValueError(f"mask: expected HxW, got shape {m.shape}")
        if m.shape != (h, w):
            m = cv2.resize((m != 0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        _draw_contour(out, m != 0, contour_color, thickness)
    return out


def colorbar(height: int, vmin: float = 0.0, vmax: float = 1.0, threshold: float | None = None,
             title: str = "", width: int = 64, bg: tuple[int, int, int] = (24, 24, 24)) -> np.ndarray:
    """A vertical JET scale (vmax at the top) with its range, and the threshold marked, as RGB."""
    if height < 40:
        raise ValueError(f"colorbar: height must be >= 40 px, got {height}")
    if not vmax > vmin:
        raise ValueError(f"colorbar: need vmax > vmin, got {vmin}, {vmax}")
    img = np.empty((height, width, 3), np.uint8)
    img[:] = bg
    fs = 0.35 if height < 200 else 0.45
    top, bottom = 18 if title else 8, height - 8
    x0, x1 = 4, 18
    ramp = np.linspace(1.0, 0.0, bottom - top)[:, None].repeat(x1 - x0, axis=1)
    img[top:bottom, x0:x1] = _jet(ramp.astype(np.float32))
    white = (235, 235, 235)
    if title:
        cv2.putText(img, title, (2, 12), _FONT, fs, white, 1, cv2.LINE_AA)

    def tick(v: float, text: str) -> None:
        y = int(round(top + (vmax - v) / (vmax - vmin) * (bottom - top - 1)))
        cv2.line(img, (x0, y), (x1 + 3, y), white, 1)
        cv2.putText(img, text, (x1 + 5, min(max(y + 4, top + 8), bottom)), _FONT, fs, white, 1, cv2.LINE_AA)

    tick(vmax, _fmt(vmax))
    tick(vmin, _fmt(vmin))
    if threshold is not None and vmin < threshold < vmax:
        tick(threshold, "thr")
    return img


def with_colorbar(img: np.ndarray, vmin: float = 0.0, vmax: float = 1.0, threshold: float | None = None,
                  title: str = "") -> np.ndarray:
    """The image with a colour bar of its full height on the right."""
    im = _as_rgb(img, "img")
    return np.concatenate([im, colorbar(max(im.shape[0], 40), vmin, vmax, threshold, title)[:im.shape[0]]], axis=1)


def _draw_contour(img: np.ndarray, binary: np.ndarray, color: tuple[int, int, int], thickness: int) -> None:
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, tuple(int(c) for c in color), thickness, lineType=cv2.LINE_AA)


def annotate(img: np.ndarray, text_lines: Sequence[str], ok: bool | None = None) -> np.ndarray:
    """Return the image with a label bar added above it (the image is not covered).

    ok=True/False colours the bar green (OK) / red (NG); None = dark grey.  The
    font scales with the image width and shrinks so the longest line fits.
    """
    im = _as_rgb(img, "img")
    lines = [str(t) for t in text_lines]
    if not lines:
        return im.copy()
    w = im.shape[1]
    scale = min(1.2, max(0.35, w / 560.0))
    widest = max(cv2.getTextSize(t, _FONT, scale, 1)[0][0] for t in lines)
    if widest > w - 8:
        scale = max(0.25, scale * (w - 8) / widest)
    thick = 2 if scale >= 0.8 else 1
    (_, th), base = cv2.getTextSize("Ag", _FONT, scale, thick)
    line_h = th + base + 4
    bar_h = line_h * len(lines) + 4
    color = NEUTRAL_COLOR if ok is None else (OK_COLOR if ok else NG_COLOR)
    bar = np.empty((bar_h, w, 3), np.uint8)
    bar[:] = color
    for i, t in enumerate(lines):
        y = 2 + i * line_h + th + 2
        cv2.putText(bar, t, (4, y), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return np.concatenate([bar, im], axis=0)


def panel(image_rgb: np.ndarray, norm_map: np.ndarray, lines: Sequence[str], ok: bool | None = None,
          mask: np.ndarray | None = None, longest: int | None = None) -> np.ndarray:
    """One labelled verdict picture: a normalised map (0..1, threshold 0.5) over the image, the
    ground-truth outline of `mask` when given, and a label bar.  longest: resize the image so its
    longer side has this many pixels first (labels are drawn at the final size, so they stay sharp)."""
    img = _as_rgb(image_rgb, "image_rgb")
    if longest is not None:
        h, w = img.shape[:2]
        s = longest / max(h, w)
        if s != 1.0:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    return annotate(overlay(img, norm_map, vmin=0.0, vmax=1.0, mask=mask), lines, ok=ok)


def verdict_lines(name: str, score: float, severity: float, is_anomaly: bool) -> list[str]:
    """Label text: what the picture is, then the raw score, the severity (not clipped at 1) and
    the verdict.  Severity = normalised score without the clip: 0.5 at the threshold."""
    return [name, f"score {score:.4g}  severity {severity:.2f}  {'NG' if is_anomaly else 'OK'}"]


def _letterbox(img: np.ndarray, cell_hw: tuple[int, int], bg: tuple[int, int, int]) -> np.ndarray:
    ch, cw = cell_hw
    h, w = img.shape[:2]
    s = min(ch / h, cw / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, (nw, nh), interpolation=interp)
    out = np.empty((ch, cw, 3), np.uint8)
    out[:] = bg
    y0, x0 = (ch - nh) // 2, (cw - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = img
    return out


def grid(images: Sequence[np.ndarray], cols: int, cell: tuple[int, int] | None = None, pad: int = 4,
         bg: tuple[int, int, int] = (24, 24, 24)) -> np.ndarray:
    """Tile images row by row into one RGB uint8 image.

    Each image is fitted into a cell (height, width) keeping its aspect ratio
    (letterboxed), so annotated images with a label bar are not squashed.
    cell defaults to the first image's size.
    """
    if len(images) == 0:
        raise ValueError("grid: no images given")
    if cols < 1:
        raise ValueError(f"grid: cols must be >= 1, got {cols}")
    if pad < 0:
        raise ValueError(f"grid: pad must be >= 0, got {pad}")
    ims = [_as_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
    ch, cw = (ims[0].shape[0], ims[0].shape[1]) if cell is None else (int(cell[0]), int(cell[1]))
    if ch <= 0 or cw <= 0:
        raise ValueError(f"grid: cell must be positive (h, w), got {cell}")
    cols = min(cols, len(ims))
    rows = (len(ims) + cols - 1) // cols
    out = np.empty((rows * ch + (rows + 1) * pad, cols * cw + (cols + 1) * pad, 3), np.uint8)
    out[:] = bg
    for i, im in enumerate(ims):
        r, c = divmod(i, cols)
        y, x = pad + r * (ch + pad), pad + c * (cw + pad)
        out[y:y + ch, x:x + cw] = _letterbox(im, (ch, cw), bg)
    return out


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB (or gray) uint8 image as PNG, creating parent folders.

    Uses imencode + tofile so non-ASCII paths work.  Raises OSError if the file
    cannot be written, ValueError for a bad array or a non-.png name.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"write_png: {path} does not end in .png")
    buf = encode_png(rgb, name=f"write_png: {path}")
    with atomic_path(path) as tmp:  # a watcher of the folder never reads half a PNG
        buf.tofile(str(tmp))  # raises OSError (permission, disk full, ...)
    return path


def encode_png(rgb: np.ndarray, name: str = "encode_png") -> np.ndarray:
    """PNG bytes (1-D uint8 array) of an RGB or gray uint8/uint16 image; ValueError for a bad array."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{name}: expected a uint8 (or uint16) numpy array")
    if rgb.size == 0:
        raise ValueError(f"{name}: empty image")
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        data = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 1):
        data = rgb
    else:
        raise ValueError(f"{name}: expected HxW or HxWx3, got shape {rgb.shape}")
    ok, buf = cv2.imencode(".png", data)
    if not ok:
        raise OSError(f"{name}: PNG encoding failed")
    return buf.reshape(-1)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def score_histogram(normal_scores: Sequence[float] | np.ndarray, anomalous_scores: Sequence[float] | np.ndarray,
                    threshold: float | None = None, size: tuple[int, int] = (320, 480),
                    bins: int = 30) -> np.ndarray:
    """Overlaid histograms of normal (blue) and anomalous (red) scores as an RGB image.

    A vertical yellow line marks the threshold.  Either score list may be empty
    (e.g. only normal hold-out scores), not both.  size = (height, width).
    """
    n = np.asarray(normal_scores, dtype=np.float64).ravel()
    a = np.asarray(anomalous_scores, dtype=np.float64).ravel()
    if n.size + a.size == 0:
        raise ValueError("score_histogram: no scores given")
    if not (np.isfinite(n).all() and np.isfinite(a).all()):
        raise ValueError("score_histogram: scores contain NaN/inf")
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"score_histogram: threshold must be finite, got {threshold}")
    if bins < 1:
        raise ValueError(f"score_histogram: bins must be >= 1, got {bins}")
    H, W = int(size[0]), int(size[1])
    if H < 120 or W < 160:
        raise ValueError(f"score_histogram: size {size} too small (min 120x160)")

    vals = np.concatenate([n, a] + ([np.array([threshold])] if threshold is not None else []))
    lo, hi = float(vals.min()), float(vals.max())
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    margin = 0.03 * (hi - lo)
    lo, hi = lo - margin, hi + margin
    edges = np.linspace(lo, hi, bins + 1)
    cn = np.histogram(n, edges)[0]
    ca = np.histogram(a, edges)[0]
    ymax = max(int(cn.max(initial=0)), int(ca.max(initial=0)), 1)

    img = np.full((H, W, 3), 255, np.uint8)
    left, right, top, bottom = 48, W - 12, 30, H - 36  # plot area in pixels
    pw, ph = right - left, bottom - top

    def xpix(v: float) -> int:
        return int(round(left + (v - lo) / (hi - lo) * pw))

    def bars(counts: np.ndarray, color: tuple[int, int, int]) -> None:
        layer = img.copy()
        for i, c in enumerate(counts):
            if c == 0:
                continue
            x0, x1 = xpix(edges[i]), max(xpix(edges[i + 1]) - 1, xpix(edges[i]))
            y0 = int(round(bottom - c / ymax * ph))
            cv2.rectangle(layer, (x0, y0), (x1, bottom), color, -1)
        # Semi-transparent so overlapping bins of both classes stay visible.
        cv2.addWeighted(layer, 0.6, img, 0.4, 0.0, dst=img)

    bars(cn, (40, 90, 220))
    bars(ca, (220, 50, 40))
    black = (0, 0, 0)
    cv2.line(img, (left, bottom), (right, bottom), black, 1)
    cv2.line(img, (left, bottom), (left, top), black, 1)
    fs = 0.4
    cv2.putText(img, _fmt(edges[0]), (left, bottom + 14), _FONT, fs, black, 1, cv2.LINE_AA)
    txt = _fmt(edges[-1])
    tw = cv2.getTextSize(txt, _FONT, fs, 1)[0][0]
    cv2.putText(img, txt, (right - tw, bottom + 14), _FONT, fs, black, 1, cv2.LINE_AA)
    cv2.putText(img, "score", (left + pw // 2 - 18, bottom + 30), _FONT, fs, black, 1, cv2.LINE_AA)
    cv2.putText(img, str(ymax), (4, top + 10), _FONT, fs, black, 1, cv2.LINE_AA)
    cv2.putText(img, "0", (30, bottom), _FONT, fs, black, 1, cv2.LINE_AA)
    cv2.putText(img, "count", (4, top + ph // 2), _FONT, fs, black, 1, cv2.LINE_AA)
    if threshold is not None:
        xt = xpix(threshold)
        cv2.line(img, (xt, top - 4), (xt, bottom), (230, 180, 0), 2)
        cv2.putText(img, f"thr {_fmt(threshold)}", (min(xt + 3, right - 70), top + 10), _FONT, fs,
                    (150, 110, 0), 1, cv2.LINE_AA)
    legend = f"normal n={n.size}"
    cv2.rectangle(img, (left + 4, 8), (left + 14, 18), (40, 90, 220), -1)
    cv2.putText(img, legend, (left + 18, 18), _FONT, fs, black, 1, cv2.LINE_AA)
    x2 = left + 26 + cv2.getTextSize(legend, _FONT, fs, 1)[0][0]
    cv2.rectangle(img, (x2, 8), (x2 + 10, 18), (220, 50, 40), -1)
    cv2.putText(img, f"anomalous n={a.size}", (x2 + 14, 18), _FONT, fs, black, 1, cv2.LINE_AA)
    return img
