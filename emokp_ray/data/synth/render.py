"""Rendering of the synthetic faces: soft masks evaluated in the canonical frame, blur and noise.

Pixels are drawn by mapping every output pixel through the inverse pose M^-1 back into the canonical
frame (synth.geometry) and evaluating soft masks there (distance to ellipses, parabolas and strokes,
edge = clip(0.5 - d)), so the drawing agrees exactly with the keypoints mapped through M.

Speed: faces are rendered a chunk at a time with numpy over [B, h, w] pixel windows (each feature is
evaluated only on the rows and columns its chunk can reach), then blurred (separable [1, 2, 1]) and
given uniform sensor noise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from emokp_ray.data.synth.geometry import CANONICAL_SIZE


def _invert(m: np.ndarray) -> np.ndarray:
    a_inv = np.linalg.inv(m[:, :, :2])
    return np.concatenate([a_inv, -np.einsum("bij,bj->bi", a_inv, m[:, :, 2])[:, :, None]], axis=2)


def _cover(d_px: np.ndarray) -> np.ndarray:
    """Coverage of a pixel by a shape whose signed distance (px, negative inside) is d_px: a 1 px ramp.
    Works in place on d_px (always a temporary here): np.clip is several times slower."""
    np.subtract(0.5, d_px, out=d_px)
    np.maximum(d_px, 0.0, out=d_px)
    return np.minimum(d_px, 1.0, out=d_px)


def _clamp01(x: np.ndarray) -> np.ndarray:
    """x clipped to [0, 1] in place (x is a temporary)."""
    np.maximum(x, 0.0, out=x)
    return np.minimum(x, 1.0, out=x)


def _paint(view: np.ndarray, alpha: np.ndarray, tone: np.ndarray) -> None:
    """view <- view + alpha * (tone - view), in place (view is a window of the canvas)."""
    view += alpha * (tone - view)


class _Canvas:
    """A batch of output images plus the inverse pose that takes their pixels into the canonical frame."""

    def __init__(self, m: np.ndarray, height: int, width: int, background: tuple[np.ndarray, np.ndarray, np.ndarray]):
        """m: poses [B, 2, 3]; background: (grey, d grey / dx, d grey / dy) [B] each, canonical px."""
        self.m, self.inv = m, _invert(m)
        self.height, self.width = height, width
        self.full = (slice(0, height), slice(0, width))
        # Output pixels per canonical unit: a distance d (canonical) is d * px output pixels.
        self.px = np.sqrt(np.abs(np.linalg.det(m[:, :, :2])))[:, None, None].astype(np.float32)
        self.images = self.linear(self.full, *background)  # [B, H, W] float32 grey levels

    def window(
        self, x0: np.ndarray | float, x1: np.ndarray | float, y0: np.ndarray | float, y1: np.ndarray | float
    ) -> tuple[slice, slice] | None:
        """Rows and columns that can hold the canonical box [x0, x1] x [y0, y1] of any face, or None."""
        xs, ys = np.empty((len(self.m), 4)), np.empty((len(self.m), 4))  # the box's 4 corners
        xs[:, 0], xs[:, 1], xs[:, 2], xs[:, 3] = x0, x0, x1, x1
        ys[:, 0], ys[:, 1], ys[:, 2], ys[:, 3] = y0, y1, y0, y1
        m = self.m[:, :, :, None]
        px, py = m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2], m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2]
        c0, r0 = math.floor(px.min()) - 1, math.floor(py.min()) - 1
        c1, r1 = math.ceil(px.max()) + 2, math.ceil(py.max()) + 2
        r0, c0 = max(int(r0), 0), max(int(c0), 0)
        r1, c1 = min(int(r1), self.height), min(int(c1), self.width)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def linear(self, win: tuple[slice, slice], f0: Any, fx: Any, fy: Any) -> np.ndarray:
        """f0 + fx * x + fy * y at the window's pixels, (x, y) canonical, per-face coefficients [B] or
        scalars: [B, h, w] float32. Affine in the pixel grid, so one full-size add (the rest is [B, 1, w]
        and [B, h, 1])."""
        rows, cols = win
        ys = np.arange(rows.start, rows.stop, dtype=np.float64)[None, :, None]
        xs = np.arange(cols.start, cols.stop, dtype=np.float64)[None, None, :]
        f0, fx, fy = (np.asarray(f, np.float64).reshape(-1, 1, 1) for f in (f0, fx, fy))
        inv = self.inv[:, :, :, None, None]  # [B, 2, 3, 1, 1]: canonical = inv[:, :, :2] @ pixel + inv[:, :, 2]
        along_x = fx * inv[:, 0, 0] + fy * inv[:, 1, 0]
        along_y = fx * inv[:, 0, 1] + fy * inv[:, 1, 1]
        at_0 = f0 + fx * inv[:, 0, 2] + fy * inv[:, 1, 2]
        return (along_x * xs + at_0).astype(np.float32) + (along_y * ys).astype(np.float32)

    def local(
        self, win: tuple[slice, slice], cx: Any, cy: Any, mirror: float = 1.0, sx: Any = 1.0, sy: Any = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Canonical coordinates of the window's pixels relative to (cx, cy): u = mirror * (x - cx) / sx,
        v = (y - cy) / sy, each [B, h, w] float32."""
        ku, kv = mirror / np.asarray(sx, np.float64), 1.0 / np.asarray(sy, np.float64)
        return self.linear(win, -np.asarray(cx) * ku, ku, 0.0), self.linear(win, -np.asarray(cy) * kv, 0.0, kv)


def _col(x: np.ndarray) -> np.ndarray:
    """[B] -> [B, 1, 1] float32, to broadcast a per-face value over a window."""
    return np.asarray(x, np.float32)[:, None, None]


def _ellipse_r2(c: _Canvas, win: tuple[slice, slice], cy: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """(x / ax)^2 + ((y - cy) / ay)^2 at the window's pixels (canonical; centred on x = 0): [B, h, w]."""
    eu, ev = c.local(win, 0.0, cy, sx=ax, sy=ay)
    np.multiply(eu, eu, out=eu)
    np.multiply(ev, ev, out=ev)
    return np.add(eu, ev, out=eu)


def _ellipse_cover(r2: np.ndarray, radius_px: np.ndarray) -> np.ndarray:
    """Coverage of an ellipse from r2 (consumed): near the edge the distance is (r2 - 1) / 2 * radius
    (first order in r - 1, no square root), radius_px [B, 1, 1] the semi-axis in output pixels."""
    half = 0.5 * radius_px
    r2 *= -half
    r2 += 0.5 + half
    return _clamp01(r2)


def _draw_head(c: _Canvas, p: dict[str, np.ndarray], alpha: np.ndarray | None) -> None:
    """Back hair, neck, head and fringe: full-frame work, so written with few passes over the pixels."""
    px, full = c.px, c.full
    k = px[:, 0, 0]  # [B] output px per canonical px
    # Hair behind the head: an ellipse a little larger than the head, cut below y = hair_length.
    ax, ay = p["head_ax"] + p["hair_volume"], p["head_ay"] + p["hair_volume"]
    back = _ellipse_cover(
        _ellipse_r2(c, full, p["head_cy"] - 0.5 * p["hair_volume"], ax, ay), _col(np.minimum(ax, ay)) * px
    )
    back *= _clamp01(c.linear(full, 0.5 + p["hair_length"] * k, 0.0, -k))  # 0.5 - (y - hair_length) px
    _paint(c.images, back, _col(p["hair"]))
    # Neck: a vertical band below the head's centre, a little darker than the face.
    neck_win = c.window(-p["neck_w"], p["neck_w"], p["head_cy"], 2.0 * CANONICAL_SIZE)
    if neck_win is not None:
        side = np.abs(c.linear(neck_win, 0.0, k, 0.0))  # |x| px
        np.subtract(_col(0.5 + p["neck_w"] * k), side, out=side)  # 0.5 - (|x| - neck_w) px
        top = c.linear(neck_win, 0.5 - p["head_cy"] * k, 0.0, k)  # 0.5 - (head_cy - y) px
        neck = _clamp01(np.minimum(side, top, out=side))
        _paint(c.images[:, neck_win[0], neck_win[1]], neck, _col(p["skin"] * 0.8))
    # Head: an ellipse narrowing towards the chin (x scaled by 1 + jaw * y / ay), shaded towards its outline.
    eu, ev = c.local(full, 0.0, p["head_cy"], sx=p["head_ax"], sy=p["head_ay"])
    eu *= c.linear(full, 1.0 - p["jaw"] * p["head_cy"] / p["head_ay"], 0.0, p["jaw"] / p["head_ay"])  # 1 + jaw * ev
    np.multiply(eu, eu, out=eu)
    np.multiply(ev, ev, out=ev)
    r2 = np.add(eu, ev, out=eu)
    tone = r2 * _col(-p["skin"] * p["shade"])
    tone += _col(p["skin"])  # skin * (1 - shade * r2)
    head = _ellipse_cover(r2, _col(p["head_ax"]) * px)
    _paint(c.images, head, tone)
    # Fringe: hair over the forehead above the hairline y = hairline + curve (x - part)^2.
    # Coverage 0.5 - (y - hairline - curve (x - part)^2) px = [0.5 + (hairline - y) px] + [sqrt(curve px) (x - part)]^2.
    bend = c.linear(full, -p["hair_part"] * np.sqrt(p["hair_curve"] * k), np.sqrt(p["hair_curve"] * k), 0.0)
    np.multiply(bend, bend, out=bend)
    bend += c.linear(full, 0.5 + p["hairline"] * k, 0.0, -k)
    fringe = _clamp01(bend)
    fringe *= np.maximum(head, back, out=tone)  # max: no seam at the head's edge
    _paint(c.images, fringe, _col(p["hair"]))
    if alpha is not None:  # foreground = hair, neck or head (photos composite faces with it)
        np.maximum(head, back, out=alpha)
        if neck_win is not None:
            region = alpha[:, neck_win[0], neck_win[1]]
            np.maximum(region, neck, out=region)


def _draw_eye(c: _Canvas, p: dict[str, np.ndarray], side: str) -> None:
    o = 1.0 if side == "l" else -1.0  # subject's left eye is on the image's right (+x)
    cx, cy, hw = o * p["eye_x"], p[f"eye_y_{side}"], p["eye_hw"]
    up, lo = p[f"eye_up_{side}"], p[f"eye_lo_{side}"]
    # The window holds the socket shadow (1.6 hw by 6 px around (cx, cy - 1.5)), which holds the eye.
    win = c.window(cx - 1.6 * hw, cx + 1.6 * hw, cy - 7.5, cy + 5.5)
    if win is None:
        return
    view = c.images[:, win[0], win[1]]
    px = c.px
    u, v = c.local(win, cx, cy, mirror=o)  # u > 0 towards the outer corner
    # Socket: a soft shadow around the eye, deepest just above it (under the brow ridge).
    su, sv = u / _col(1.6 * hw), (v + 1.5) / 6.0
    view *= 1.0 - _col(p["socket"]) * _clamp01(1.0 - (su * su + sv * sv))
    vv = v + _col(p["eye_tilt"]) * u  # along the tilted eye axis
    s = u / _col(hw)
    q = 1.0 - s * s  # 1 at the centre, 0 at the corners
    up_edge = -_col(up) * q  # upper lid y (relative to the axis)
    lo_edge = _col(lo) * q
    eye = _cover(np.maximum(up_edge - vv, vv - lo_edge) * px)
    _paint(view, eye, _col(p["sclera"]))
    r = np.sqrt(u * u + v * v)
    _paint(view, eye * _cover((r - _col(p["iris_r"])) * px), _col(p["iris"]))
    _paint(view, eye * _cover((r - _col(p["pupil_r"])) * px), _col(p["pupil"]))
    # Upper lid line (lashes): a dark stroke centred on the upper lid, corner to corner, 1.3 px thick
    # across the lid (vertical distance / sqrt(1 + slope^2): the lid is steep near the corners).
    slope = s * _col(2.0 * up / hw) - _col(p["eye_tilt"])
    across = np.abs(vv - up_edge) / np.sqrt(1.0 + slope * slope)
    lid = _cover(np.maximum(across - 0.65, (np.abs(s) - 1.0) * _col(hw) - 0.3) * px)
    _paint(view, lid, _col(p["brow"]))


def _draw_brow(c: _Canvas, p: dict[str, np.ndarray], side: str) -> None:
    o = 1.0 if side == "l" else -1.0
    x_in, y_in = p[f"brow_in_x_{side}"], p[f"brow_in_y_{side}"]
    x_out, y_out = p[f"brow_out_x_{side}"], p[f"brow_out_y_{side}"]
    th, arch = p["brow_th"], p["brow_arch"]
    top = np.minimum(y_in, y_out) - np.maximum(arch, 0) - th
    bottom = np.maximum(y_in, y_out) + th
    win = c.window(np.minimum(o * x_in, o * x_out) - th, np.maximum(o * x_in, o * x_out) + th, top, bottom)
    if win is None:
        return
    view = c.images[:, win[0], win[1]]
    length = x_out - x_in
    # t: 0 at the inner end, 1 at the outer end; centre line y(t) = y_in + dy t - 4 arch t (1 - t).
    t, v = c.local(win, o * x_in, 0.0, mirror=o, sx=length)
    dy, a4 = _col(y_out - y_in), _col(4.0 * arch)
    centre = _col(y_in) + t * (dy - a4 + a4 * t)
    beyond = np.maximum(np.abs(t - 0.5) - 0.5, 0.0) * _col(length)  # past an end, along the brow
    half_th = _col(0.5 * th) * (1.0 - 0.35 * _clamp01(t))  # tapers towards the outer end
    d = np.sqrt(np.square(v - centre) + beyond * beyond) - half_th
    _paint(view, _cover(d * c.px), _col(p["brow"]))


def _draw_nose(c: _Canvas, p: dict[str, np.ndarray]) -> None:
    ny, nw, bridge = p["nose_y"], p["nose_w"], p["nose_bridge"]
    win = c.window(-nw - 2.0, nw + 2.0, ny - 20.0, ny + 2.5)
    if win is None:
        return
    view = c.images[:, win[0], win[1]]
    px = c.px
    u, v = c.local(win, 0.0, ny)
    au = np.abs(u)
    # Bridge shadows: soft lines at |u| = bridge widening to the nostril wings, from y = -18 to -3.
    along = _clamp01((v + 18.0) / 15.0)
    side_x = _col(bridge) + along * _col(0.85 * nw - bridge)
    shadow = 0.25 * _clamp01(1.0 - np.abs(au - side_x) / 1.6) * (along > 0) * (v < -2.0)
    _paint(view, shadow, _col(p["brow"]))
    # Lower outline through the tip: y = -curve u^2 (the wings are higher), |u| <= nose_w.
    d = np.maximum(np.abs(v + _col(p["nose_curve"]) * u * u) - _col(0.5 * p["nose_th"]), au - _col(nw))
    _paint(view, 0.8 * _cover(d * px), _col(p["brow"]))
    # Nostrils: small dark ellipses either side of the tip, just above the outline.
    nu = (au - _col(0.5 * nw)) / 1.5
    nv = (v + _col(p["nose_curve"] * (0.5 * nw) ** 2) + 1.0) / 0.9
    _paint(view, 0.7 * _cover((np.sqrt(nu * nu + nv * nv) - 1.0) * 0.9 * px), _col(p["cavity"]))


def _draw_mouth(c: _Canvas, p: dict[str, np.ndarray]) -> None:
    my, w, k, tilt, g = p["mouth_y"], p["mouth_w"], p["mouth_k"], p["mouth_tilt"], p["mouth_g"]
    up, lo = p["lip_up"], p["lip_lo"]
    top = my - g - up - np.abs(tilt) - np.maximum(-k, 0) - 1.0
    bottom = my + g + lo + np.abs(tilt) + np.maximum(k, 0) + 1.0
    win = c.window(-w - 1.5, w + 1.5, top, bottom)
    if win is None:
        return
    view = c.images[:, win[0], win[1]]
    px = c.px
    s, v = c.local(win, 0.0, my, sx=w)  # s: -1 at the right corner, +1 at the left corner
    s2 = s * s
    q = np.maximum(1.0 - s2, 0.0)
    dv = v - (_col(k) * s2 + _col(tilt) * s)  # height above (-) / below (+) the mouth's centre line
    gap = _col(g) * np.sqrt(q)  # half opening: an ellipse profile (O in surprise)
    lips = _cover(np.maximum(-dv - gap - _col(up) * q, dv - gap - _col(lo) * q) * px) * (q > 0)
    _paint(view, lips, np.where(dv < 0, _col(p["lip"] * 0.88), _col(p["lip"])))
    # The opening, at least a 1.2 px dark line, running to the corners exactly.
    opening = _cover(np.maximum(np.abs(dv) - gap - 0.6, (np.abs(s) - 1.0) * _col(w) - 0.5) * px)
    _paint(view, opening, _col(p["cavity"]))
    teeth = opening * _cover((dv + gap - 2.0 * gap * _col(p["teeth"])) * px) * (gap > 0.8)
    _paint(view, teeth, _col(p["teeth_tone"]))


def render_faces(
    p: dict[str, np.ndarray], m: np.ndarray, height: int, width: int, with_alpha: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw faces p through poses m [B, 2, 3] on [B, height, width] float32 canvases (grey levels,
    lit, no blur or noise). With with_alpha, also the foreground coverage [B, height, width] in [0, 1]."""
    c = _Canvas(m, height, width, background=(p["background"], p["bg_grad_x"], p["bg_grad_y"]))
    alpha = np.empty((len(m), height, width), np.float32) if with_alpha else None
    _draw_head(c, p, alpha)
    for side in ("l", "r"):
        _draw_eye(c, p, side)
        _draw_brow(c, p, side)
    _draw_nose(c, p)
    _draw_mouth(c, p)
    # Lighting: a linear gradient across the face (canonical px), applied to the whole scene.
    c.images *= c.linear(c.full, 1.0, p["light_x"], p["light_y"])
    return c.images, alpha


def _blur121(x: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur over the last two axes (edges replicated); sigma ~0.7 px."""
    rows = np.empty_like(x)  # horizontal pass, x4
    np.add(x[..., :-2], x[..., 2:], out=rows[..., 1:-1])
    rows[..., 1:-1] += x[..., 1:-1]
    rows[..., 1:-1] += x[..., 1:-1]
    rows[..., 0] = 3 * x[..., 0] + x[..., 1]
    rows[..., -1] = 3 * x[..., -1] + x[..., -2]
    out = np.empty_like(x)  # vertical pass, x16 in all
    np.add(rows[..., :-2, :], rows[..., 2:, :], out=out[..., 1:-1, :])
    out[..., 1:-1, :] += rows[..., 1:-1, :]
    out[..., 1:-1, :] += rows[..., 1:-1, :]
    out[..., 0, :] = 3 * rows[..., 0, :] + rows[..., 1, :]
    out[..., -1, :] = 3 * rows[..., -1, :] + rows[..., -2, :]
    out *= 1.0 / 16.0
    return out


def degrade(images: np.ndarray, blur: np.ndarray, noise_std: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur (per-image level in [0, 2]: linear between none, one and two [1,2,1] passes), add uniform
    noise with the given std [B] (grey levels), round and clip to uint8. images: [B, H, W] float32,
    overwritten."""
    if blur.max() > 0:
        once = _blur121(images)
        twice = np.flatnonzero(blur > 1)  # the second pass only where it is asked for
        if len(twice):
            sub = once[twice]
            sub += _col(blur[twice] - 1.0) * (_blur121(sub) - sub)
            once[twice] = sub
        once -= images
        once *= _col(np.minimum(blur, 1.0))
        images += once
    if noise_std.max() > 0:
        # Uniform integer noise, 8 samples per 64-bit draw (4x cheaper than rng.random): values
        # 0..255 have mean 127.5 and std 73.9, scaled to noise_std grey levels.
        raw = rng.bit_generator.random_raw(-(-images.size // 8)).view(np.uint8)[: images.size]
        noise = raw.reshape(images.shape).astype(np.float32)
        noise -= 127.5
        noise *= _col(noise_std / 73.9)
        images += noise
    images += 0.5  # round to nearest on the cast below
    np.maximum(images, 0.0, out=images)
    np.minimum(images, 255.0, out=images)
    return images.astype(np.uint8)
