import pytest

from ptystream.types import Geometry


def test_fresnel_scaling_of_the_p25_geometry():
    """The shared P25 scan: z1 = 3.65 mm focus-to-sample, z2 = 1.12 m, 55 um pixels."""
    g = Geometry(9.79e-11, 1.12, 55e-6, 100, propagation="near_field", focus_to_sample_m=3.65e-3)
    assert g.magnification == pytest.approx(307.8, rel=1e-3)
    assert g.propagation_distance_m == pytest.approx(3.638e-3, rel=1e-3)
    assert g.object_pixel_size_m == pytest.approx(0.1787e-6, rel=1e-3)


def test_plane_wave_near_field_and_far_field():
    near = Geometry(561e-9, 2e-3, 6.45e-6, 64, propagation="near_field")
    assert near.magnification == 1.0 and near.object_pixel_size_m == 6.45e-6
    assert near.propagation_distance_m == 2e-3
    far = Geometry(1.5e-10, 2.0, 75e-6, 64)
    assert far.object_pixel_size_m == pytest.approx(1.5e-10 * 2.0 / (64 * 75e-6))


def test_inconsistent_geometry_is_named():
    with pytest.raises(ValueError, match="propagation must be"):
        Geometry(1e-10, 1.0, 1e-5, 64, propagation="fraunhofer")
    with pytest.raises(ValueError, match="near field only"):
        Geometry(1e-10, 1.0, 1e-5, 64, focus_to_sample_m=1e-3)
