"""The one rotation convention, and the conversions to the other tools' angles.

tomochunk's Euler angles ``phi, psi, the`` (degrees) follow DeepFinder and
TOM/PyTOM: ``R = Rz(psi) @ Rx(the) @ Rz(phi)`` acting on column vectors
``(x, y, z)``, the rotation that places the reference (particle frame) in
the tomogram. :func:`euler_to_matrix` is that matrix; every other tool's
angles are converted from it here, and each conversion is tested against
that tool's own definition:

- RELION ``(rot, tilt, psi)``: RELION maps particle to tomogram coordinates
  with ``Euler_angles2matrix(rot, tilt, psi)`` (``src/euler.cpp``), which
  is the *transpose* of the intrinsic ``Rz(rot) Ry(tilt) Rz(psi)``.
  Equating it with ``R`` gives ``rot = 90 - phi``, ``tilt = the``,
  ``psi_relion = -90 - psi`` (:func:`tom_to_relion`).
- Dynamo ``(tdrot, tilt, narot)``: Dynamo's angles are passive (they
  rotate the particle onto the reference), so Dynamo's matrix
  ``Rz(narot) Rx(tilt) Rz(tdrot)`` is ``R``'s inverse:
  ``tdrot = 180 - psi``, ``tilt = the``, ``narot = 180 - phi``
  (:func:`tom_to_dynamo`), as the ``eulerangles`` package defines Dynamo
  against RELION.
- copick: ``transformation_`` is the 4x4 matrix ``[[R, t], [0, 1]]`` with
  ``t`` a shift in Å added to the point's location (:func:`tom_to_copick`).

Only numpy is used: the matrices are written out, so the conventions can be
read here rather than inferred from a library's axis strings.
"""

from __future__ import annotations

import numpy as np

__all__ = ["euler_to_matrix", "matrix_to_euler", "relion_matrix", "tom_to_relion", "relion_to_tom",
           "tom_to_dynamo", "dynamo_to_tom", "tom_to_copick", "copick_to_tom", "wrap_angle"]


def wrap_angle(a):
    """Angles in degrees wrapped to [-180, 180).

    Examples
    --------
    >>> float(wrap_angle(270.0)), float(wrap_angle(-190.0))
    (-90.0, 170.0)
    """
    return (np.asarray(a, float) + 180.0) % 360.0 - 180.0


def _rz(a):
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _rx(a):
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _ry(a):
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def euler_to_matrix(phi, psi, the):
    """Rotation matrix ``Rz(psi) @ Rx(the) @ Rz(phi)`` for TOM/DeepFinder ZXZ angles in degrees.

    ``phi`` turns first, about z; then ``the`` about x; then ``psi`` about
    z, all about fixed axes, acting on column vectors ``(x, y, z)``. It maps
    particle (reference) coordinates to tomogram coordinates.

    Parameters
    ----------
    phi, psi, the : float or array_like
        Angles in degrees (broadcast together).

    Returns
    -------
    numpy.ndarray
        ``(3, 3)``, or ``(..., 3, 3)`` for arrays.

    Examples
    --------
    >>> euler_to_matrix(0, 0, 0).round(6).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    >>> np.allclose(euler_to_matrix(90, 0, 0) @ [1, 0, 0], [0, 1, 0])
    True
    """
    phi, psi, the = np.broadcast_arrays(*(np.deg2rad(np.asarray(a, float)) for a in (phi, psi, the)))
    return _rz(psi) @ _rx(the) @ _rz(phi)


def matrix_to_euler(m):
    """Inverse of :func:`euler_to_matrix`: ``(phi, psi, the)`` in degrees.

    ``the`` is in [0, 180], ``phi`` and ``psi`` in [-180, 180]. At
    ``the`` = 0 or 180 only ``phi ± psi`` is defined; ``psi`` is set to 0.

    Parameters
    ----------
    m : array_like
        ``(3, 3)`` or ``(..., 3, 3)`` rotation matrices.

    Examples
    --------
    >>> np.round(matrix_to_euler(euler_to_matrix(10, 20, 30)), 6).tolist()
    [10.0, 20.0, 30.0]
    """
    m = np.asarray(m, float)
    # Third row is (sin the sin phi, sin the cos phi, cos the); third column (sin psi sin the, -cos psi sin the, .).
    st = np.hypot(m[..., 2, 0], m[..., 2, 1])
    the = np.arctan2(st, m[..., 2, 2])
    phi = np.arctan2(m[..., 2, 0], m[..., 2, 1])
    psi = np.arctan2(m[..., 0, 2], -m[..., 1, 2])
    lock = st < 1e-9
    if np.any(lock):
        # the = 0: R = Rz(phi + psi); the = 180: R = diag(1, -1, -1) Rz(phi) with psi = 0.
        sign = np.where(m[..., 2, 2] > 0, 1.0, -1.0)
        phi = np.where(lock, np.arctan2(sign * m[..., 1, 0], m[..., 0, 0]), phi)
        psi = np.where(lock, 0.0, psi)
    phi, psi, the = (np.rad2deg(a) for a in (phi, psi, the))
    if m.ndim == 2:
        return float(phi), float(psi), float(the)
    return phi, psi, the


def relion_matrix(rot, tilt, psi):
    """RELION's ``Euler_angles2matrix(rot, tilt, psi)``: particle to tomogram.

    Equal to :func:`euler_to_matrix` of :func:`relion_to_tom` of the same
    angles.

    Examples
    --------
    >>> np.allclose(relion_matrix(*tom_to_relion(10, 20, 30)), euler_to_matrix(10, 20, 30))
    True
    """
    rot, tilt, psi = np.broadcast_arrays(*(np.deg2rad(np.asarray(a, float)) for a in (rot, tilt, psi)))
    # (Rz(rot) Ry(tilt) Rz(psi))^T, written as the product of the inverses.
    return _rz(-psi) @ _ry(-tilt) @ _rz(-rot)


def tom_to_relion(phi, psi, the):
    """TOM/DeepFinder ``(phi, psi, the)`` to RELION ``(rot, tilt, psi)``, degrees.

    RELION's particle->tomogram matrix ``Euler_angles2matrix(rot, tilt,
    psi)`` of the result equals :func:`euler_to_matrix` of the input.

    Examples
    --------
    >>> [float(v) for v in tom_to_relion(10, 20, 30)]
    [80.0, 30.0, -110.0]
    """
    return wrap_angle(90.0 - np.asarray(phi, float)), np.asarray(the, float) + 0.0, \
        wrap_angle(-90.0 - np.asarray(psi, float))


def relion_to_tom(rot, tilt, psi):
    """Inverse of :func:`tom_to_relion`: returns ``(phi, psi, the)``.

    Examples
    --------
    >>> [float(v) for v in relion_to_tom(80, 30, -110)]
    [10.0, 20.0, 30.0]
    """
    return wrap_angle(90.0 - np.asarray(rot, float)), wrap_angle(-90.0 - np.asarray(psi, float)), \
        np.asarray(tilt, float) + 0.0


def tom_to_dynamo(phi, psi, the):
    """TOM/DeepFinder ``(phi, psi, the)`` to Dynamo ``(tdrot, tilt, narot)``, degrees.

    Dynamo's matrix ``Rz(narot) Rx(tilt) Rz(tdrot)`` of the result is the
    inverse (transpose) of :func:`euler_to_matrix` of the input.

    Examples
    --------
    >>> [float(v) for v in tom_to_dynamo(10, 20, 30)]
    [160.0, 30.0, 170.0]
    """
    return wrap_angle(180.0 - np.asarray(psi, float)), np.asarray(the, float) + 0.0, \
        wrap_angle(180.0 - np.asarray(phi, float))


def dynamo_to_tom(tdrot, tilt, narot):
    """Inverse of :func:`tom_to_dynamo`: returns ``(phi, psi, the)``.

    Examples
    --------
    >>> [float(v) for v in dynamo_to_tom(160, 30, 170)]
    [10.0, 20.0, 30.0]
    """
    return wrap_angle(180.0 - np.asarray(narot, float)), wrap_angle(180.0 - np.asarray(tdrot, float)), \
        np.asarray(tilt, float) + 0.0


def tom_to_copick(phi, psi, the, shift=None):
    """copick ``transformation_`` matrices ``[[R, t], [0, 1]]`` for TOM angles.

    Parameters
    ----------
    phi, psi, the : float or array_like
        Degrees; ``None`` for all three gives the identity rotation.
    shift : array_like, optional
        ``(..., 3)`` translation in Å (x, y, z); zero by default.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` or ``(n, 4, 4)``.

    Examples
    --------
    >>> tom_to_copick(0, 0, 0, shift=[1, 2, 3])[:3, 3].tolist()
    [1.0, 2.0, 3.0]
    """
    r = euler_to_matrix(phi, psi, the)
    t = np.zeros(r.shape[:-2] + (4, 4))
    t[..., :3, :3] = r
    t[..., 3, 3] = 1.0
    if shift is not None:
        t[..., :3, 3] = np.asarray(shift, float)
    return t


def copick_to_tom(t):
    """copick ``transformation_`` to ``(phi, psi, the, shift)``; ``shift`` in Å, ``(..., 3)``.

    Examples
    --------
    >>> phi, psi, the, shift = copick_to_tom(tom_to_copick(10, 20, 30, shift=[0, 0, 5]))
    >>> [round(float(v), 6) for v in (phi, psi, the)], shift.tolist()
    ([10.0, 20.0, 30.0], [0.0, 0.0, 5.0])
    """
    t = np.asarray(t, float)
    phi, psi, the = matrix_to_euler(t[..., :3, :3])
    return phi, psi, the, t[..., :3, 3].copy()
