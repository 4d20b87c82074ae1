"""The embedded default data set: static textured rooms rendered along camera trajectories.

A scene is an axis-aligned room (floor, ceiling, four walls) with boxes, spheres and vertical
cylinders standing on the floor. Every surface carries a procedural, tileable texture with detail
at several scales (band-limited noise, tiles, spots) so that SIFT finds plenty of features.

Rendering is exact ray casting: one ray per pixel through the pixel centre (+0.5), the first hit
gives the colour and the z-depth. The depth is therefore the true geometry, which lets tests
project pixels between frames and check epipolar constraints against analytic truth.

World and camera axes follow OpenCV (x right, y down, z forward). The world origin sits at eye
height in the middle of the room; the floor is at positive y. Cameras of every trajectory stay in
``CAMERA_REGION`` (a small cylinder around the origin) and objects are placed outside a larger
keep-out radius, so a camera never enters or touches an object.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Box",
    "Sphere",
    "Cylinder",
    "Scene",
    "TRAJECTORY_KINDS",
    "PRESET_KINDS",
    "CAMERA_REGION",
    "make_scene",
    "make_trajectory",
    "default_intrinsics",
    "render_frames",
    "cast_rays",
    "look_at_rotation",
    "describe_clip",
    "make_texture",
    "PALETTE",
]

TRAJECTORY_KINDS: tuple[str, ...] = ("forward", "pan", "orbit", "truck", "mixed")
# Named camera paths for sampling: the rendered kinds plus moves the data set does not contain
# (the synthetic writer keeps drawing from TRAJECTORY_KINDS only, so the data stays as it was).
PRESET_KINDS: tuple[str, ...] = TRAJECTORY_KINDS + ("tilt", "roll", "zoom_in", "zoom_out")

# Cameras live in |(x, z)| <= radius and |y| <= half_height (metres, world frame).
CAMERA_REGION = {"radius": 1.2, "half_height": 0.25}
# Objects keep their bounding circle outside this radius, leaving >= 0.8 m of clearance.
_OBJECT_KEEPOUT = 2.0
# One tile spans more than a wall is high, so repeats are rare and SIFT matches stay unambiguous.
_TEXTURE_SIZE = 512  # texels per tile side
_TILE_METRES = 4.0  # world size of one texture tile
_EPS = 1e-9

PALETTE: dict[str, tuple[float, float, float]] = {
    "white": (0.88, 0.87, 0.84),
    "cream": (0.93, 0.86, 0.70),
    "grey": (0.55, 0.56, 0.58),
    "red": (0.75, 0.22, 0.18),
    "orange": (0.90, 0.52, 0.18),
    "yellow": (0.90, 0.80, 0.25),
    "green": (0.30, 0.60, 0.30),
    "teal": (0.18, 0.55, 0.55),
    "blue": (0.22, 0.35, 0.75),
    "purple": (0.50, 0.30, 0.62),
    "pink": (0.90, 0.55, 0.65),
    "brown": (0.50, 0.33, 0.20),
    "wooden": (0.65, 0.45, 0.26),
    "dark": (0.22, 0.22, 0.25),
}


@dataclass
class Box:
    """Box rotated by ``yaw`` radians about the world y axis."""

    center: np.ndarray  # (3,)
    half: np.ndarray  # (3,) half extents in the box frame
    yaw: float
    texture: int


@dataclass
class Sphere:
    center: np.ndarray  # (3,)
    radius: float
    texture: int


@dataclass
class Cylinder:
    """Vertical cylinder: axis parallel to world y, spanning ``y_min..y_max``."""

    center_xz: np.ndarray  # (2,)
    radius: float
    y_min: float
    y_max: float
    texture: int


@dataclass
class Scene:
    room_min: np.ndarray  # (3,) x, y (ceiling), z
    room_max: np.ndarray  # (3,) x, y (floor), z
    room_textures: tuple[int, ...]  # (6,) -x, +x, -y (ceiling), +y (floor), -z, +z
    boxes: list[Box] = field(default_factory=list)
    spheres: list[Sphere] = field(default_factory=list)
    cylinders: list[Cylinder] = field(default_factory=list)
    textures: np.ndarray = None  # (N, S, S, 3) float32 albedo in [0, 1], tileable
    texture_names: list[str] = field(default_factory=list)  # colour word of each texture
    seed: int = 0

    @property
    def num_objects(self) -> int:
        return len(self.boxes) + len(self.spheres) + len(self.cylinders)

    def describe(self) -> str:
        walls = self.texture_names[self.room_textures[0]]
        floor = self.texture_names[self.room_textures[3]]
        parts = []
        for count, word in ((len(self.boxes), "box"), (len(self.spheres), "ball"), (len(self.cylinders), "column")):
            if count:
                plural = "es" if word.endswith("x") else "s"
                parts.append(f"{count} {word}{plural if count > 1 else ''}")
        things = ", ".join(parts) if parts else "nothing"
        return f"a room with {walls} walls, a {floor} floor and {things}"


# --------------------------------------------------------------------------------------------
# textures


@functools.lru_cache(maxsize=8)
def _frequency_radius(size: int) -> np.ndarray:
    fy = np.fft.fftfreq(size)[:, None] * size
    fx = np.fft.rfftfreq(size)[None, :] * size
    return np.sqrt(fx**2 + fy**2)


def _band_noise(rng: np.random.Generator, size: int, beta: float, max_freq: int) -> np.ndarray:
    """Tileable noise with a 1/f^beta spectrum cut at ``max_freq`` cycles per tile, in [0, 1]."""
    f = _frequency_radius(size)
    amp = np.where((f > 0) & (f <= max_freq), 1.0 / np.maximum(f, 1.0) ** beta, 0.0)
    noise = rng.standard_normal((2, *amp.shape))
    img = np.fft.irfft2(amp * (noise[0] + 1j * noise[1]), s=(size, size))
    img = (img - img.min()) / max(img.max() - img.min(), 1e-12)
    return img.astype(np.float32)


def _spots(rng: np.random.Generator, size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Soft round spots (blob features SIFT latches on to), wrapped so the tile stays periodic."""
    weight = np.zeros((size, size), dtype=np.float32)
    value = np.zeros((size, size), dtype=np.float32)
    for _ in range(count):
        cy, cx = rng.uniform(0, size, 2)
        r = max(rng.uniform(3.0, 12.0) * size / _TEXTURE_SIZE, 0.75)
        reach = int(np.ceil(3 * r))
        ys = np.arange(int(cy) - reach, int(cy) + reach + 1)
        xs = np.arange(int(cx) - reach, int(cx) + reach + 1)
        g = np.exp(-((ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2) / (2 * r**2))
        iy, ix = np.ix_(ys % size, xs % size)
        brighter = g >= weight[iy, ix]
        weight[iy, ix] = np.where(brighter, g, weight[iy, ix])
        value[iy, ix] = np.where(brighter, rng.uniform(0, 1), value[iy, ix])
    return weight, value


def make_texture(rng: np.random.Generator, base: np.ndarray, pattern: str, size: int) -> np.ndarray:
    """Tileable (size, size, 3) float32 albedo: noise at two scales, a pattern and soft spots."""
    base = np.asarray(base, dtype=np.float32)
    coarse = _band_noise(rng, size, beta=1.6, max_freq=16)
    fine = _band_noise(rng, size, beta=0.8, max_freq=min(80, size // 3))
    accent = np.clip(base[::-1] * 0.7 + rng.uniform(0, 0.5, 3), 0, 1).astype(np.float32)
    lum = 0.375 + 0.36 * coarse + 0.35 * fine
    yy, xx = np.mgrid[0:size, 0:size]
    pattern_mask = None
    if pattern == "tiles":
        period = size // int(rng.choice([8, 16]))
        lum = np.where(((yy % period) < 2) | ((xx % period) < 2), lum * 0.45, lum)
    elif pattern == "bricks":
        ph, pw = size // 32, size // 8
        shift = ((yy // ph) % 2) * (pw // 2)
        tone = _band_noise(rng, size, beta=0.0, max_freq=12)
        lum = np.where(((yy % ph) < 2) | (((xx + shift) % pw) < 2), 0.72 / max(base.mean(), 0.05), lum * (0.8 + 0.4 * tone))
    elif pattern == "stripes":
        period = size // int(rng.choice([16, 32]))
        pattern_mask = (((xx + yy // 3) % period) < period // 3)[..., None]
    img = base * lum[..., None]
    if pattern_mask is not None:
        img = np.where(pattern_mask, img * 0.6 + accent * 0.4, img)
    weight, value = _spots(rng, size, count=max(8, int(rng.integers(160, 320) * (size / _TEXTURE_SIZE) ** 2)))
    spot_colour = accent * (0.4 + 0.8 * value[..., None])
    w = weight[..., None]
    img = img * (1 - w) + spot_colour * w
    return np.clip(img, 0.0, 1.0, out=img).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# scene


def make_scene(seed: int, texture_size: int = _TEXTURE_SIZE) -> Scene:
    """A random room with several objects, deterministic for ``seed``.

    ``texture_size`` texels span one 4 m texture tile; smaller values (e.g. 128) build scenes
    faster for tiny renders and tests, at the cost of detail close to the camera. The geometry and
    colours depend on ``seed`` only."""
    if texture_size < 32 or texture_size % 32:
        raise ValueError(f"make_scene: texture_size must be a positive multiple of 32, got {texture_size}")
    rng = np.random.default_rng([seed, 0x5CE7E])
    half_x, half_z = rng.uniform(3.6, 5.0, 2)
    floor_y = rng.uniform(1.3, 1.6)
    ceil_y = -rng.uniform(1.2, 1.7)
    room_min = np.array([-half_x, ceil_y, -half_z])
    room_max = np.array([half_x, floor_y, half_z])

    names = list(PALETTE)
    textures, tex_names = [], []

    def new_texture(pattern: str, choices: list[str]) -> int:
        name = str(rng.choice(choices))
        base = np.asarray(PALETTE[name]) * rng.uniform(0.9, 1.1, 3)
        # Texture noise has its own stream, so the geometry does not depend on texture_size.
        tex_rng = np.random.default_rng([seed, 0x7E87, len(textures)])
        textures.append(make_texture(tex_rng, np.clip(base, 0, 1), pattern, texture_size))
        tex_names.append(name)
        return len(textures) - 1

    wall_pattern = str(rng.choice(["plain", "bricks", "stripes"]))
    wall_a = new_texture(wall_pattern, ["white", "cream", "grey", "blue", "green", "pink", "yellow"])
    wall_b = new_texture(str(rng.choice(["plain", "stripes", "bricks"])), names)
    ceiling = new_texture("tiles", ["white", "cream", "grey"])
    floor = new_texture(str(rng.choice(["tiles", "plain"])), ["wooden", "brown", "grey", "dark", "cream"])
    # Opposite walls share a texture; the other pair differs so the room is not symmetric.
    room_textures = (wall_a, wall_a, ceiling, floor, wall_b, wall_a)

    placed: list[tuple[float, float, float]] = []  # x, z, bounding radius

    def place(radius: float) -> tuple[float, float] | None:
        for _ in range(200):
            x = rng.uniform(-half_x + radius + 0.05, half_x - radius - 0.05)
            z = rng.uniform(-half_z + radius + 0.05, half_z - radius - 0.05)
            if np.hypot(x, z) < _OBJECT_KEEPOUT + radius:
                continue
            if any(np.hypot(x - px, z - pz) < radius + pr + 0.1 for px, pz, pr in placed):
                continue
            placed.append((x, z, radius))
            return x, z
        return None

    boxes, spheres, cylinders = [], [], []
    for _ in range(int(rng.integers(3, 7))):
        half = np.array([rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.6)])
        spot = place(float(np.hypot(half[0], half[2])))
        if spot is None:
            continue
        tex = new_texture(str(rng.choice(["plain", "stripes", "tiles"])), names)
        center = np.array([spot[0], floor_y - half[1], spot[1]])
        boxes.append(Box(center, half, float(rng.uniform(0, np.pi)), tex))
        if rng.uniform() < 0.35:  # a ball resting on top of the box
            r = float(rng.uniform(0.12, min(half[0], half[2])))
            tex_s = new_texture("plain", names)
            spheres.append(Sphere(center + np.array([0.0, -half[1] - r, 0.0]), r, tex_s))
    for _ in range(int(rng.integers(1, 3))):
        r = float(rng.uniform(0.2, 0.5))
        spot = place(r)
        if spot is None:
            continue
        spheres.append(Sphere(np.array([spot[0], floor_y - r, spot[1]]), r, new_texture("plain", names)))
    for _ in range(int(rng.integers(0, 3))):
        r = float(rng.uniform(0.12, 0.35))
        spot = place(r)
        if spot is None:
            continue
        top = float(rng.choice([ceil_y, floor_y - rng.uniform(0.6, 1.8)]))
        cylinders.append(Cylinder(np.array(spot), r, top, floor_y, new_texture("stripes", names)))
    return Scene(
        room_min=room_min,
        room_max=room_max,
        room_textures=room_textures,
        boxes=boxes,
        spheres=spheres,
        cylinders=cylinders,
        textures=np.stack(textures),
        texture_names=tex_names,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------
# cameras


def default_intrinsics(height: int, width: int, fov_deg: float = 60.0) -> np.ndarray:
    """Pixel K with square pixels, horizontal field of view ``fov_deg`` and a central principal point."""
    if height <= 0 or width <= 0:
        raise ValueError(f"default_intrinsics: image size must be positive, got {height}x{width}")
    if not 0 < fov_deg < 180:
        raise ValueError(f"default_intrinsics: fov_deg must be in (0, 180), got {fov_deg}")
    f = 0.5 * width / np.tan(np.deg2rad(fov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def look_at_rotation(forward: np.ndarray) -> np.ndarray:
    """(..., 3) forward vectors -> (..., 3, 3) camera-to-world rotations, no roll, OpenCV axes."""
    z = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    down = np.broadcast_to(np.array([0.0, 1.0, 0.0]), z.shape)
    x = np.cross(down, z)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=-1)


def _yaw_pitch_forward(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    # Positive pitch looks up, which is -y in OpenCV world axes.
    return np.stack([np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)], axis=-1)


def _smooth_profile(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Monotone 0 -> 1 progress with a random ease, so speeds vary across clips."""
    s = np.linspace(0.0, 1.0, num_frames)
    ease = rng.uniform(0.0, 1.0)
    return (1 - ease) * s + ease * (3 * s**2 - 2 * s**3)


def _clamp_to_region(pos: np.ndarray) -> np.ndarray:
    """Shrink a path about its first point so every camera stays inside ``CAMERA_REGION``."""
    r_max, h_max = CAMERA_REGION["radius"], CAMERA_REGION["half_height"]
    start = pos[0]

    def inside(p: np.ndarray) -> bool:
        return bool((np.hypot(p[:, 0], p[:, 2]) <= r_max).all() and (np.abs(p[:, 1]) <= h_max).all())

    if inside(pos):
        return pos
    lo, hi = 0.0, 1.0  # the start point itself is always inside
    for _ in range(40):
        mid = (lo + hi) / 2
        if inside(start + mid * (pos - start)):
            lo = mid
        else:
            hi = mid
    return start + lo * (pos - start)


def make_trajectory(kind: str, num_frames: int, seed: int, start_seed: int | None = None) -> np.ndarray:
    """(T, 4, 4) float64 camera-to-world poses of one RealEstate10K-like camera move.

    Kinds: ``forward`` (dolly along the view direction), ``pan`` (yaw in place), ``orbit`` (arc
    around a point ahead while looking at it), ``truck`` (sideways slide), ``mixed`` (translation
    with yaw and pitch changes); sampling presets only: ``tilt`` (pitch in place), ``roll`` (rotation
    about the view axis), ``zoom_in`` / ``zoom_out`` (straight dolly towards / away from the view,
    as camera-control papers name it). Deterministic for ``(kind, num_frames, seed)``.
    ``start_seed``: draw the first camera (position, yaw, pitch) from this seed instead, so several
    trajectories (other kinds or seeds) leave from the same view of a room.
    """
    if kind not in PRESET_KINDS:
        raise ValueError(f"make_trajectory: unknown kind {kind!r}; expected one of {PRESET_KINDS}")
    if num_frames < 1:
        raise ValueError(f"make_trajectory: num_frames must be >= 1, got {num_frames}")
    rng = np.random.default_rng([seed, PRESET_KINDS.index(kind), 0x7A])
    first = rng if start_seed is None else np.random.default_rng([start_seed, 0x51])
    r_start = first.uniform(0.0, 0.5)
    a_start = first.uniform(0, 2 * np.pi)
    start = np.array([r_start * np.cos(a_start), first.uniform(-0.1, 0.1), r_start * np.sin(a_start)])
    yaw0 = first.uniform(0, 2 * np.pi)
    pitch0 = first.uniform(-0.12, 0.12)
    s = _smooth_profile(num_frames, rng)
    sign = rng.choice([-1.0, 1.0])

    yaw = np.full(num_frames, yaw0)
    pitch = np.full(num_frames, pitch0)
    if kind == "forward":
        dist = rng.uniform(0.8, 1.6)
        yaw = yaw0 + sign * rng.uniform(0.0, 0.15) * s
        fwd0 = _yaw_pitch_forward(np.array(yaw0), np.array(0.0))
        pos = start + dist * s[:, None] * fwd0
    elif kind == "pan":
        yaw = yaw0 + sign * rng.uniform(0.4, 1.0) * s
        pitch = pitch0 + rng.uniform(-0.05, 0.05) * s
        pos = start + np.zeros((num_frames, 3))
    elif kind == "orbit":
        radius = rng.uniform(2.0, 3.0)
        span = sign * rng.uniform(0.25, 0.45)
        target = start + radius * _yaw_pitch_forward(np.array(yaw0), np.array(0.0))
        theta = yaw0 + np.pi + span * s  # angle of the camera seen from the target
        pos = target + radius * np.stack([np.sin(theta), np.zeros_like(theta), np.cos(theta)], -1)
        pos[:, 1] = start[1]
        yaw = theta - np.pi
    elif kind == "tilt":
        pitch = pitch0 + sign * rng.uniform(0.25, 0.45) * s
        pos = start + np.zeros((num_frames, 3))
    elif kind in ("roll", "zoom_in", "zoom_out"):
        pitch = np.zeros(num_frames)
        dist = {"roll": 0.0, "zoom_in": 1.0, "zoom_out": -1.0}[kind] * rng.uniform(0.8, 1.2)
        pos = start + dist * s[:, None] * _yaw_pitch_forward(np.array(yaw0), np.array(0.0))
    elif kind == "truck":
        dist = sign * rng.uniform(0.6, 1.4)
        right = np.array([np.cos(yaw0), 0.0, -np.sin(yaw0)])
        pos = start + dist * s[:, None] * right
    else:  # mixed
        direction = rng.normal(size=3)
        direction[1] *= 0.2
        direction /= np.linalg.norm(direction)
        pos = start + rng.uniform(0.6, 1.4) * s[:, None] * direction
        yaw = yaw0 + rng.uniform(-0.6, 0.6) * s
        pitch = pitch0 + rng.uniform(-0.25, 0.25) * s
    pos = _clamp_to_region(pos)
    c2w = np.tile(np.eye(4), (num_frames, 1, 1))
    c2w[:, :3, :3] = look_at_rotation(_yaw_pitch_forward(yaw, pitch))
    if kind == "roll":  # about the camera's own z axis, up to ~25 degrees
        angle = sign * rng.uniform(0.3, 0.45) * s
        c, si = np.cos(angle), np.sin(angle)
        rz = np.zeros((num_frames, 3, 3))
        rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = c, -si, si, c, 1.0
        c2w[:, :3, :3] = c2w[:, :3, :3] @ rz
    c2w[:, :3, 3] = pos
    return c2w


def describe_clip(scene: Scene, kind: str) -> str:
    """Caption of a rendered clip: the camera move and the scene, like a RealEstate10K caption."""
    moves = {
        "forward": "the camera moves forward",
        "pan": "the camera pans",
        "orbit": "the camera orbits around",
        "truck": "the camera slides sideways",
        "mixed": "the camera moves and turns",
    }
    if kind not in moves:
        raise ValueError(f"describe_clip: unknown kind {kind!r}; expected one of {TRAJECTORY_KINDS}")
    return f"{moves[kind]} in {scene.describe()}"


# --------------------------------------------------------------------------------------------
# ray casting


def _rows_times(x: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``x @ M`` for (N, 3) rows and a 3x3 matrix, without BLAS (whose thread pool is slow to
    wake for tiny inner dimensions on busy machines)."""
    return x[:, 0:1] * M[0] + x[:, 1:2] * M[1] + x[:, 2:3] * M[2]


def _safe(d: np.ndarray) -> np.ndarray:
    # Rays parallel to a slab would divide by zero; a tiny offset keeps the arithmetic finite
    # and gives the same answer (the slab is then hit at +-huge t).
    return np.where(np.abs(d) < 1e-15, 1e-15, d)


class _Hits:
    """Nearest hit so far for a batch of rays."""

    def __init__(self, n: int):
        self.t = np.full(n, np.inf)
        self.normal = np.zeros((n, 3))
        self.uv = np.zeros((n, 2))
        self.tex = np.zeros(n, dtype=np.int64)

    def update(self, t: np.ndarray, normal, uv, tex) -> None:
        closer = t < self.t
        if not closer.any():
            return
        self.t = np.where(closer, t, self.t)
        self.normal[closer] = normal[closer] if np.ndim(normal) == 2 else normal
        self.uv[closer] = uv[closer]
        self.tex[closer] = tex[closer] if np.ndim(tex) == 1 else tex


def _hit_room(scene: Scene, o: np.ndarray, d: np.ndarray, hits: _Hits) -> None:
    d_safe = _safe(d)
    bound = np.where(d > 0, scene.room_max, scene.room_min)
    t_axis = (bound - o) / d_safe  # (N, 3), positive from inside the room
    axis = np.argmin(t_axis, axis=1)
    t = np.take_along_axis(t_axis, axis[:, None], 1)[:, 0]
    positive = np.take_along_axis(d > 0, axis[:, None], 1)[:, 0]
    face = 2 * axis + positive  # -x, +x, -y, +y, -z, +z
    p = o + t[:, None] * d
    normal = np.zeros_like(p)
    normal[np.arange(len(p)), axis] = np.where(positive, -1.0, 1.0)
    # uv: the two coordinates orthogonal to the face normal
    uv = np.where(
        (axis == 0)[:, None], p[:, [2, 1]], np.where((axis == 1)[:, None], p[:, [0, 2]], p[:, [0, 1]])
    )
    tex = np.asarray(scene.room_textures)[face]
    uv = uv + (face * 0.91)[:, None]  # walls sharing a texture show different parts of it
    hits.update(t, normal, uv, tex)


def _hit_box(box: Box, o: np.ndarray, d: np.ndarray, hits: _Hits) -> None:
    c, s = np.cos(box.yaw), np.sin(box.yaw)
    R = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # box -> world
    ol = _rows_times(o - box.center, R)
    dl = _rows_times(d, R)
    inv = 1.0 / _safe(dl)
    t1 = (-box.half - ol) * inv
    t2 = (box.half - ol) * inv
    tmin = np.minimum(t1, t2)
    tmax = np.maximum(t1, t2)
    axis = np.argmax(tmin, axis=1)
    t_near = np.take_along_axis(tmin, axis[:, None], 1)[:, 0]
    t_far = tmax.min(axis=1)
    ok = (t_near <= t_far) & (t_near > _EPS)
    if not ok.any():
        return
    t = np.where(ok, t_near, np.inf)
    sign = -np.sign(np.take_along_axis(dl, axis[:, None], 1)[:, 0])
    nl = np.zeros_like(ol)
    nl[np.arange(len(ol)), axis] = sign
    normal = _rows_times(nl, R.T)
    pl = ol + np.where(ok, t_near, 0.0)[:, None] * dl
    uv = np.where(
        (axis == 0)[:, None], pl[:, [2, 1]], np.where((axis == 1)[:, None], pl[:, [0, 2]], pl[:, [0, 1]])
    )
    uv = uv + (axis * 0.37)[:, None]  # faces of one box show different parts of its texture
    hits.update(t, normal, uv, np.full(len(o), box.texture))


def _hit_sphere(sph: Sphere, o: np.ndarray, d: np.ndarray, hits: _Hits) -> None:
    oc = o - sph.center
    a = np.einsum("ij,ij->i", d, d)
    b = np.einsum("ij,ij->i", oc, d)
    cc = np.einsum("ij,ij->i", oc, oc) - sph.radius**2
    disc = b * b - a * cc
    ok = disc >= 0
    if not ok.any():
        return
    t = (-b - np.sqrt(np.where(ok, disc, 0.0))) / a
    ok &= t > _EPS
    t = np.where(ok, t, np.inf)
    p = oc + np.where(ok, t, 0.0)[:, None] * d
    normal = p / sph.radius
    r = sph.radius
    uv = np.stack([r * np.arctan2(normal[:, 0], normal[:, 2]), r * np.arcsin(np.clip(normal[:, 1], -1, 1))], -1)
    hits.update(t, normal, uv, np.full(len(o), sph.texture))


def _hit_cylinder(cyl: Cylinder, o: np.ndarray, d: np.ndarray, hits: _Hits) -> None:
    ox, oz = o[:, 0] - cyl.center_xz[0], o[:, 2] - cyl.center_xz[1]
    dx, dz = d[:, 0], d[:, 2]
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    cc = ox * ox + oz * oz - cyl.radius**2
    disc = b * b - a * cc
    ok = (disc >= 0) & (a > 1e-18)
    t_side = (-b - np.sqrt(np.where(ok, disc, 0.0))) / np.where(a > 1e-18, a, 1.0)
    y_side = o[:, 1] + t_side * d[:, 1]
    ok &= (t_side > _EPS) & (y_side >= cyl.y_min) & (y_side <= cyl.y_max)
    t_side = np.where(ok, t_side, np.inf)
    # Caps (only the top one is visible from a camera at eye height, but both are exact).
    dy = _safe(d[:, 1])
    best_t, best_n, best_uv = t_side, None, None
    px = ox + np.where(ok, t_side, 0.0) * dx
    pz = oz + np.where(ok, t_side, 0.0) * dz
    ang = np.arctan2(px, pz)
    normal = np.stack([px, np.zeros_like(px), pz], -1) / cyl.radius
    uv = np.stack([cyl.radius * ang, y_side], -1)
    best_n, best_uv = normal, uv
    for y_cap, ny in ((cyl.y_min, -1.0), (cyl.y_max, 1.0)):
        t_cap = (y_cap - o[:, 1]) / dy
        cx = ox + t_cap * dx
        cz = oz + t_cap * dz
        ok_cap = (t_cap > _EPS) & (cx * cx + cz * cz <= cyl.radius**2) & (t_cap < best_t)
        if ok_cap.any():
            best_t = np.where(ok_cap, t_cap, best_t)
            best_n = np.where(ok_cap[:, None], np.array([0.0, ny, 0.0]), best_n)
            best_uv = np.where(ok_cap[:, None], np.stack([cx, cz], -1), best_uv)
    hits.update(best_t, best_n, best_uv, np.full(len(o), cyl.texture))


def cast_rays(scene: Scene, origins: np.ndarray, dirs: np.ndarray) -> _Hits:
    """Nearest surface hit of rays ``origins + t * dirs`` (t > 0) inside the room; float64."""
    origins = np.broadcast_to(np.asarray(origins, dtype=np.float64), dirs.shape)
    hits = _Hits(len(dirs))
    _hit_room(scene, origins, dirs, hits)
    for box in scene.boxes:
        _hit_box(box, origins, dirs, hits)
    for sph in scene.spheres:
        _hit_sphere(sph, origins, dirs, hits)
    for cyl in scene.cylinders:
        _hit_cylinder(cyl, origins, dirs, hits)
    return hits


_LIGHTS = (
    (np.array([0.35, 0.8, 0.5]) / np.linalg.norm([0.35, 0.8, 0.5]), 0.30),
    (np.array([-0.6, 0.3, -0.4]) / np.linalg.norm([-0.6, 0.3, -0.4]), 0.18),
)


def _shade(scene: Scene, hits: _Hits) -> np.ndarray:
    """View-independent colour (albedo x Lambert), so a surface point looks the same in every frame."""
    S = scene.textures.shape[1]
    tu = hits.uv[:, 0] / _TILE_METRES * S - 0.5
    tv = hits.uv[:, 1] / _TILE_METRES * S - 0.5
    u0 = np.floor(tu)
    v0 = np.floor(tv)
    fu = (tu - u0)[:, None].astype(np.float32)
    fv = (tv - v0)[:, None].astype(np.float32)
    u0 = u0.astype(np.int64) % S
    v0 = v0.astype(np.int64) % S
    u1 = (u0 + 1) % S
    v1 = (v0 + 1) % S
    tex = scene.textures
    k = hits.tex
    albedo = (
        tex[k, v0, u0] * (1 - fu) * (1 - fv)
        + tex[k, v0, u1] * fu * (1 - fv)
        + tex[k, v1, u0] * (1 - fu) * fv
        + tex[k, v1, u1] * fu * fv
    )
    light = np.full(len(k), 0.62)
    for direction, strength in _LIGHTS:
        # Light arrives along ``direction``; surfaces facing against it are lit.
        light = light + strength * np.clip(-(hits.normal[:, 0] * direction[0] + hits.normal[:, 1] * direction[1] + hits.normal[:, 2] * direction[2]), 0.0, None)
    return albedo * light[:, None].astype(np.float32)


def render_frames(
    scene: Scene, K: np.ndarray, c2w: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``(T, H, W, 3)`` uint8 frames and ``(T, H, W)`` float32 z-depth.

    ``K`` is a (3, 3) or (T, 3, 3) pixel intrinsic matrix, ``c2w`` (T, 4, 4) camera-to-world in
    OpenCV axes. One ray per pixel through the pixel centre (u + 0.5, v + 0.5); the depth is the
    z coordinate of the first hit in the camera frame, exact up to float32 rounding.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"render_frames: c2w must be (T, 4, 4), got {c2w.shape}")
    T = c2w.shape[0]
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (T, 3, 3))
    if K.shape != (T, 3, 3):
        raise ValueError(f"render_frames: K must be (3, 3) or ({T}, 3, 3), got {K.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"render_frames: image size must be positive, got {height}x{width}")
    vs, us = np.mgrid[0:height, 0:width].astype(np.float64)
    pix = np.stack([us.ravel() + 0.5, vs.ravel() + 0.5, np.ones(height * width)], -1)  # (HW, 3)
    frames = np.empty((T, height, width, 3), dtype=np.uint8)
    depth = np.empty((T, height, width), dtype=np.float32)
    for i in range(T):
        # Unnormalised ray directions with camera-z component 1: the hit parameter t is the z-depth.
        rays_cam = _rows_times(pix, np.linalg.inv(K[i]).T)
        dirs = _rows_times(rays_cam, c2w[i, :3, :3].T)
        hits = cast_rays(scene, c2w[i, :3, 3], dirs)
        colour = _shade(scene, hits)
        frames[i] = np.clip(np.round(colour * 255.0), 0, 255).astype(np.uint8).reshape(height, width, 3)
        depth[i] = hits.t.reshape(height, width).astype(np.float32)
    return frames, depth
