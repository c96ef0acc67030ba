"""Head pose (yaw, pitch, roll in degrees) from a face's landmarks, as pure functions.

The pose is the rotation that best projects a published 3-D mean face onto the landmarks
(``cv2.solvePnP``). Mean face: OpenFace's "In-the-wild aligned PDM 68" mean shape (the 68 iBUG
points in millimetre-like units, the array widely copied as ``model_points_68``), in OpenCV's
camera axes as published: x to the image's right, y down, z away from the camera (the nose tip is
the nearest point), so a frontal upright face has the identity rotation. The five ArcFace points
are placed on it as :func:`faceetl.align.five_from_68` derives them from 68 points: eye centres
(means of points 36-41 and 42-47), nose tip 30, mouth corners 48 and 54.

Camera: focal length the image's larger side in pixels, principal point the image centre, no lens
distortion (nothing else is known about a photo). Solver: ``SOLVEPNP_ITERATIVE`` (Levenberg-
Marquardt on the reprojection error) started from a frontal face at the landmarks' place and
scale, which keeps five points on the solution near the face rather than on a mirror-image one.

Angles, from ``R = Rz(roll) @ Ry(-yaw) @ Rx(-pitch)`` (R maps the mean face into the camera):

- ``yaw``: positive when the face turns toward the image's right (the nose points right);
- ``pitch``: positive when the face looks up (the nose points up in the image);
- ``roll``: the in-plane rotation about the camera axis, 0 upright, positive clockwise as seen
  in the image (the eye on the image's right lower than the one on its left).

Mirroring the image flips the signs of yaw and roll and keeps pitch; rotating it by an angle
about the principal point adds that angle to roll.
"""

from __future__ import annotations

import math

import numpy as np

# OpenFace (Baltrusaitis et al.), lib/local/LandmarkDetector/model/pdms/In-the-wild_aligned_PDM_68.txt:
# the mean shape's 68 x's, then 68 y's, then 68 z's (copied as data; checked equal to a second,
# row-wise copy of the same array)
_X = (
    -73.393523, -72.775014, -70.533638, -66.850058, -59.790187, -48.368973, -34.121101,
    -17.875411, 0.098749, 17.477031, 32.648966, 46.372358, 57.343480, 64.388482, 68.212038,
    70.486405, 71.375822, -61.119406, -51.287588, -37.804800, -24.022754, -11.635713, 12.056636,
    25.106256, 38.338588, 51.191007, 60.053851, 0.653940, 0.804809, 0.992204, 1.226783,
    -14.772472, -7.180239, 0.555920, 8.272499, 15.214351, -46.047290, -37.674688, -27.883856,
    -19.648268, -28.272965, -38.082418, 19.265868, 27.894191, 37.437529, 45.170805, 38.196454,
    28.764989, -28.916267, -17.533194, -6.684590, 0.381001, 8.375443, 18.876618, 28.794412,
    19.057574, 8.956375, 0.381549, -7.428895, -18.160634, -24.377490, -6.897633, 0.340663,
    8.444722, 24.474473, 8.449166, 0.205322, -7.198266,
)  # fmt: skip
_Y = (
    -29.801432, -10.949766, 7.929818, 26.074280, 42.564390, 56.481080, 67.246992, 75.056892,
    77.061286, 74.758448, 66.929021, 56.311389, 42.419126, 25.455880, 6.990805, -11.666193,
    -30.365191, -49.361602, -58.769795, -61.996155, -61.033399, -56.686759, -57.391033,
    -61.902186, -62.777713, -59.302347, -50.190255, -42.193790, -30.993721, -19.944596,
    -8.414541, 2.598255, 4.751589, 6.562900, 4.661005, 2.643046, -37.471411, -42.730510,
    -42.711517, -36.754742, -35.134493, -34.919043, -37.032306, -43.342445, -43.110822,
    -38.086515, -35.532024, -35.484289, 28.612716, 22.172187, 19.029051, 20.721118, 19.035460,
    22.394109, 28.079924, 36.298248, 39.634575, 40.395647, 39.836405, 36.677899, 28.677771,
    25.475976, 26.014269, 25.326198, 28.323008, 30.596216, 31.408738, 30.844876,
)  # fmt: skip
_Z = (
    47.667532, 45.909403, 44.842580, 43.141114, 38.635298, 30.750622, 18.456453, 3.609035,
    -0.881698, 5.181201, 19.176563, 30.770570, 37.628629, 40.886309, 42.281449, 44.142567,
    47.140426, 14.254422, 7.268147, 0.442051, -6.606501, -11.967398, -12.051204, -7.315098,
    -1.022953, 5.349435, 11.615746, -13.380835, -21.150853, -29.284036, -36.948060, -20.132003,
    -23.536684, -25.944448, -23.695741, -20.858157, 7.037989, 3.021217, 1.353629, -0.111088,
    -0.147273, 1.476612, -0.665746, 0.247660, 1.696435, 4.894163, 0.282961, -1.172675,
    -2.240310, -15.934335, -22.611355, -23.748437, -22.721995, -15.610679, -3.217393,
    -14.987997, -22.554245, -23.591626, -22.406106, -15.121907, -4.785684, -20.893742,
    -22.220479, -21.025520, -5.712776, -20.671489, -21.903670, -20.328022,
)  # fmt: skip
#: the published mean face, (68, 3), iBUG point order, camera axes (x right, y down, z away)
OPENFACE_MEAN_68 = np.stack([_X, _Y, _Z], axis=1).astype(np.float64)
#: each iBUG point's mirror partner (jaw, brows, nostrils, eyes, lips; the midline maps to itself)
IBUG_MIRROR = np.array(
    [*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31,
     45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
     54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
)  # fmt: skip


def _symmetric(points: np.ndarray) -> np.ndarray:
    """``points`` made left-right symmetric: each averaged with its mirrored partner."""
    mirrored = points[IBUG_MIRROR] * np.array([-1.0, 1.0, 1.0])
    return (points + mirrored) / 2


#: the mean face used, made left-right symmetric (the published one's nose tip lies 1.3 units
#: right of the eyes' midline, which reads 2-3 degrees of yaw on a symmetric face and would
#: break "a mirrored face has the opposite yaw"); points move by 1.3 units at most
MEAN_FACE_68 = _symmetric(OPENFACE_MEAN_68)
#: the five ArcFace points on it: eye centres, nose tip, mouth corners (image left first)
MEAN_FACE_5 = np.stack(
    [
        MEAN_FACE_68[36:42].mean(axis=0),
        MEAN_FACE_68[42:48].mean(axis=0),
        MEAN_FACE_68[30],
        MEAN_FACE_68[48],
        MEAN_FACE_68[54],
    ]
)

NAN_POSE = (math.nan, math.nan, math.nan)


def camera_matrix(width: float, height: float) -> np.ndarray:
    """The 3x3 pinhole camera assumed for a photo: focal length its larger side in pixels,
    principal point its centre (no distortion)."""
    f = float(max(width, height))
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def euler_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a 3x3 rotation, ``R = Rz(roll) Ry(-yaw) Rx(-pitch)``
    (see the module docstring for the signs)."""
    r = np.asarray(rotation, np.float64)
    beta = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    alpha = math.atan2(r[2, 1], r[2, 2])
    gamma = math.atan2(r[1, 0], r[0, 0])
    return -math.degrees(beta), -math.degrees(alpha), math.degrees(gamma)


def _initial_guess(
    model: np.ndarray, points: np.ndarray, cam: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A frontal face rolled as the points' eye line, at their place and scale: where the
    solver starts (rvec, tvec)."""
    import cv2

    f = cam[0, 0]
    # the in-plane angle of the model's widest pair of points against the image's
    i, j = int(np.argmin(model[:, 0])), int(np.argmax(model[:, 0]))
    d = points[j] - points[i]
    roll = math.atan2(d[1], d[0])
    scale = float(np.linalg.norm(d)) / float(np.linalg.norm(model[j, :2] - model[i, :2]))
    z = f / max(scale, 1e-9)  # depth at which the model projects at the points' size
    centre = points.mean(axis=0) - cam[:2, 2]
    c, s = math.cos(roll), math.sin(roll)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    t = np.array([centre[0] * z / f, centre[1] * z / f, z]) - rotation @ model.mean(axis=0)
    rvec, _ = cv2.Rodrigues(rotation)
    return rvec, t.reshape(3, 1)


def solve_pose(
    model: np.ndarray, points: np.ndarray, width: float, height: float
) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of the 3-D ``model`` points (K, 3) seen at the image
    ``points`` (K, 2) in a ``width`` x ``height`` photo; NaNs when the solver fails or its fit
    is impossible: behind the camera, or turned away from it (whose landmarks nobody sees; such
    fits come from faces a few pixels wide)."""
    import cv2

    model = np.asarray(model, np.float64).reshape(-1, 3)
    points = np.asarray(points, np.float64).reshape(-1, 2)
    cam = camera_matrix(width, height)
    rvec, tvec = _initial_guess(model, points, cam)
    try:
        ok, rvec, tvec = cv2.solvePnP(
            model, points, cam, None, rvec, tvec, True, cv2.SOLVEPNP_ITERATIVE
        )
    except cv2.error:
        return NAN_POSE
    if not ok or not np.isfinite(rvec).all() or not tvec[2, 0] > 0:
        return NAN_POSE
    rotation, _ = cv2.Rodrigues(rvec)
    if not rotation[2, 2] > 0:  # the mean face's depth axis points back at the camera
        return NAN_POSE
    return euler_angles(rotation)


def head_pose(
    landmarks: np.ndarray | None,
    shape: np.ndarray | None,
    width: float,
    height: float,
) -> tuple[float, float, float, int]:
    """(yaw, pitch, roll, points) of one face: from its 68-point ``shape`` where it has one
    (dlib's 68 points, x y interleaved or (68, 2)), else from its five ArcFace ``landmarks``;
    ``points`` says which (68 or 5, 0 with NaN angles when neither is complete)."""
    p68 = _complete(shape, 68)
    if p68 is not None:
        return (*solve_pose(MEAN_FACE_68, p68, width, height), 68)
    p5 = _complete(landmarks, 5)
    if p5 is not None:
        return (*solve_pose(MEAN_FACE_5, p5, width, height), 5)
    return (*NAN_POSE, 0)


def _complete(points: np.ndarray | None, n: int) -> np.ndarray | None:
    """``points`` as an (n, 2) array when it has exactly ``n`` finite points, else None."""
    if points is None or np.ndim(points) == 0:
        return None
    p = np.asarray(points, np.float64).reshape(-1)
    if p.size != 2 * n or not np.isfinite(p).all():
        return None
    return p.reshape(n, 2)
