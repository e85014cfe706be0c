"""Principal-axis alignment (fsiad.fewshot.ops.align): pose, gate, align and its inverse."""

import math

import pytest
import torch
from fsiad.fewshot.ops.align import Pose, align, axial_spread, otsu, principal_pose, unalign


def _bar(h=96, w=96, angle=30.0, cx=0.5, cy=0.5, length=0.6, width=0.08, marker=None):
    """A bright bar (length and width as fractions of min(h, w)) on a dark, slightly uneven
    background; ``marker`` = (t along the bar in [-0.5, 0.5]) paints a small red dot there."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5,
                          indexing="ij")
    a = math.radians(angle)
    px, py = cx * w, cy * h
    u = (x - px) * math.cos(a) + (y - py) * math.sin(a)
    v = -(x - px) * math.sin(a) + (y - py) * math.cos(a)
    s = min(h, w)
    part = (u.abs() <= length * s / 2) & (v.abs() <= width * s / 2)
    img = torch.stack([0.2 + 0.02 * x / w, 0.22 + 0.0 * x, 0.25 + 0.0 * x])
    img = torch.where(part[None], torch.tensor([0.8, 0.78, 0.75])[:, None, None], img)
    where = None
    if marker is not None:
        mx, my = px + marker * length * s * math.cos(a), py + marker * length * s * math.sin(a)
        dot = (x - mx) ** 2 + (y - my) ** 2 <= 2.0**2
        img = torch.where(dot[None], torch.tensor([1.0, 0.0, 0.0])[:, None, None], img)
        where = (mx - 0.5, my - 0.5)  # pixel-index coordinates
    return img, where


def _axis_deg(angle):
    """Axis direction in degrees folded to (-90, 90]."""
    d = (angle + 90.0) % 180.0 - 90.0
    return 90.0 if d == -90.0 else d


@pytest.mark.parametrize("angle", [0.0, 30.0, -60.0, 90.0, 135.0, 172.0])
def test_pose_recovers_axis_and_centroid(angle):
    img, _ = _bar(angle=angle, cx=0.45, cy=0.55)
    p = principal_pose(img)
    diff = abs(math.degrees(p.angle) - _axis_deg(angle)) % 180.0
    assert min(diff, 180 - diff) < 2.0, (angle, math.degrees(p.angle))
    assert abs(p.cx - 0.45) < 0.02 and abs(p.cy - 0.55) < 0.02
    assert p.usable and p.elongation > 20 and p.border == 0.0


def test_usable_only_for_a_clear_elongated_part():
    g = torch.Generator().manual_seed(0)
    texture = torch.rand(3, 96, 96, generator=g)
    assert not principal_pose(texture).usable  # no plain background: much of the border is "part"
    y, x = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    disk = torch.where(((x - 48) ** 2 + (y - 48) ** 2 <= 20**2)[None], torch.full((3, 1, 1), 0.8),
                       torch.full((3, 1, 1), 0.2))
    p = principal_pose(disk)
    assert p.border == 0 and p.elongation < 1.2 and not p.usable  # no axis
    speck, _ = _bar(length=0.05, width=0.02)
    assert not principal_pose(speck).usable  # too small a share of the image
    assert principal_pose(_bar()[0]).usable
    assert not Pose(0.0, 0.5, 0.5, 50.0, 0.1, 0.3).usable and Pose(0.0, 0.5, 0.5, 50.0, 0.1, 0.0).usable


@pytest.mark.parametrize("shape", [(96, 96), (80, 128), (128, 80)])
def test_align_lays_the_axis_along_the_longer_side_at_the_centre(shape):
    h, w = shape
    img, _ = _bar(h, w, angle=-35.0, cx=0.42, cy=0.58, length=0.55)
    out = align(img, principal_pose(img))
    assert out.shape == img.shape and out.dtype == img.dtype
    p = principal_pose(out)
    want = 0.0 if w >= h else 90.0
    diff = abs(math.degrees(p.angle) - want) % 180.0
    assert min(diff, 180 - diff) < 2.5, math.degrees(p.angle)
    assert abs(p.cx - 0.5) < 0.02 and abs(p.cy - 0.5) < 0.02
    # uncovered corners take the background colour, not black
    assert float(out[:, 0, 0].sub(img[:, 1, 1]).abs().max()) < 0.05


@pytest.mark.parametrize("angle,shape", [(25.0, (96, 96)), (-70.0, (90, 120)), (120.0, (120, 90))])
def test_unalign_takes_a_map_of_the_aligned_image_back_to_the_original_pixels(angle, shape):
    """A marker painted on the part is found in the aligned image; a map peaked there, taken
    back with ``unalign``, peaks where the marker is in the original image."""
    img, (mx, my) = _bar(*shape, angle=angle, cx=0.46, cy=0.53, marker=0.3)
    pose = principal_pose(img)
    out = align(img, pose)
    red = out[0] - out[1]  # the marker is the only red-not-green spot
    amap = red  # the map = the marker's redness
    back = unalign(amap, pose)
    assert back.shape == img.shape[1:]
    iy, ix = divmod(int(torch.argmax(back)), back.shape[1])
    assert abs(ix - mx) <= 1.5 and abs(iy - my) <= 1.5, ((ix, iy), (mx, my))
    # pixels the aligned frame never covered get the map's minimum (nothing to report)
    assert float(back.min()) >= float(amap.min()) - 1e-6


def test_axial_spread_and_otsu():
    assert axial_spread([0.0]) == 0.0
    assert abs(axial_spread([math.radians(1), math.radians(179)]) - 2.0) < 1e-6  # axes, not directions
    assert abs(axial_spread([math.radians(10), math.radians(100), math.radians(40)]) - 90.0) < 1e-6
    values = torch.cat([torch.full((100,), 0.1), torch.full((50,), 0.9)])
    assert 0.1 < otsu(values) < 0.9


def test_pose_of_a_large_image_is_measured_on_a_small_copy_with_the_same_result():
    big, _ = _bar(480, 640, angle=-20.0, cx=0.4, cy=0.6, length=0.5)
    small, _ = _bar(120, 160, angle=-20.0, cx=0.4, cy=0.6, length=0.5)
    pb, ps = principal_pose(big), principal_pose(small)
    assert abs(math.degrees(pb.angle - ps.angle)) < 1.0 and abs(math.degrees(pb.angle) + 20.0) < 1.0
    assert abs(pb.cx - 0.4) < 0.01 and abs(pb.cy - 0.6) < 0.01 and pb.usable
    assert len(pb.background) == 3 and abs(pb.background[1] - 0.22) < 0.01


def _headed(angle, h=96, w=96):
    """A bar with a wide head at one end (a screw seen from the side)."""
    bar, _ = _bar(h, w, angle=angle, length=0.6, width=0.06)
    head, _ = _bar(h, w, angle=angle, cx=0.5 - 0.27 * math.cos(math.radians(angle)) * min(h, w) / w,
                   cy=0.5 - 0.27 * math.sin(math.radians(angle)) * min(h, w) / h, length=0.08, width=0.16)
    return torch.maximum(bar, head)


@pytest.mark.parametrize("angle", [20.0, -75.0])
def test_directed_pose_lays_an_asymmetric_part_the_same_way_round(angle):
    from fsiad.fewshot.ops.align import directed

    a, b = _headed(angle), _headed(angle + 180.0)
    pa, pb = principal_pose(a), principal_pose(b)
    assert abs(pa.skew) > 0.2 and abs(pb.skew) > 0.2 and pa.skew * pb.skew < 0  # opposite ends heavier
    undirected = (align(a, pa) - align(b, pb)).abs().mean()
    da, db = directed(pa), directed(pb)
    assert da.skew > 0 and db.skew > 0 and -math.pi < da.angle <= math.pi
    same = (align(a, da) - align(b, db)).abs().mean()
    assert float(same) < 0.01 < float(undirected), (float(same), float(undirected))
    # a part symmetric along its axis keeps its pose (nothing to decide)
    sym = principal_pose(_bar(angle=angle)[0])
    assert abs(sym.skew) < 0.05
