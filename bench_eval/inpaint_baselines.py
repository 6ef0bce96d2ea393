"""Inpainting without a trained generator: the reference rows of the inpainting table.

Every filler takes `images` (N, S, S, 3) uint8 and `holes` (N, S, S) bool and returns the
completed images as (N, S, S, 3) floats in [0, 1]; pixels outside the holes are the originals.

* mean colour   each hole filled with the mean colour of its own image's context;
* Telea, NS     OpenCV's fast-marching (Telea 2004) and Navier-Stokes (Bertalmio 2001) inpainting;
* nearest neighbour (the paper's Table 1 rows): describe the query's context, find the database
                image whose context (the same pixels: the database image under the query's hole) is
                nearest in L2, and paste that image's pixels into the hole. Descriptors: HOG of the
                context (blocks touching the hole are left out), or a context encoder's features.
"""
import cv2
import numpy as np
from skimage.feature import hog

from bench_runtime.progress import progress_bar

HOG_CELL = 8
INPAINT_RADIUS = 5  # px of context OpenCV looks at around each hole pixel


def _composite(images, holes, fill):
    """Originals outside the holes, `fill` (uint8 or float in [0, 1]) inside, as floats in [0, 1]."""
    fill = fill.astype(np.float32) / 255 if fill.dtype == np.uint8 else fill.astype(np.float32)
    return np.where(holes[..., None], fill, images.astype(np.float32) / 255)


def mean_colour_fill(images, holes):
    context = ~holes[..., None]
    means = (images * context).sum(axis=(1, 2)) / context.sum(axis=(1, 2))
    return _composite(images, holes, np.broadcast_to(means[:, None, None, :] / 255, images.shape))


def opencv_fill(images, holes, method):
    flag = {"telea": cv2.INPAINT_TELEA, "navier-stokes": cv2.INPAINT_NS}[method]
    filled = np.stack([cv2.inpaint(np.ascontiguousarray(image), hole.astype(np.uint8), INPAINT_RADIUS, flag)
                       for image, hole in zip(images, holes)])
    return _composite(images, holes, filled)


def hog_blocks(images):
    """(N, R, C, 2, 2, 9) HOG blocks of (N, S, S, 3) uint8 images (8 px cells, 2x2-cell blocks)."""
    return np.stack([hog(image, orientations=9, pixels_per_cell=(HOG_CELL, HOG_CELL), cells_per_block=(2, 2),
                         channel_axis=-1, feature_vector=False) for image in images])


def hog_context(blocks, hole):
    """(N, D) descriptors from `hog_blocks` output with the blocks that touch `hole` zeroed, so
    distances between two descriptors compare context pixels only."""
    rows, cols = blocks.shape[1:3]
    # Block (r, c) covers cells r..r+1, c..c+1: pixels [8r, 8r + 16) x [8c, 8c + 16).
    cells = hole[:(rows + 1) * HOG_CELL, :(cols + 1) * HOG_CELL].reshape(
        rows + 1, HOG_CELL, cols + 1, HOG_CELL).any(axis=(1, 3))
    touched = cells[:-1, :-1] | cells[1:, :-1] | cells[:-1, 1:] | cells[1:, 1:]
    blocks = blocks.copy()
    blocks[:, touched] = 0
    return blocks.reshape(len(blocks), -1)


def nearest_neighbour_fill(images, holes, database, describe, prepare=None, progress="nearest neighbours"):
    """Fill each hole with the pixels of the database image nearest in `describe(prepare(images),
    hole)` space, where database images are described under the query's own hole. `prepare`
    (default: none) is the part of the description that does not depend on the hole, done once
    for the database. `progress`: the progress bar's label (False: no bar)."""
    prepare = prepare or (lambda x: x)
    prepared_database = prepare(database)
    filled = np.empty(images.shape, np.float32)
    cached_hole, database_features = None, None
    for i in progress_bar(range(len(images)), desc=progress or "", unit="img", disable=not progress):
        hole = holes[i]
        if cached_hole is None or not np.array_equal(hole, cached_hole):  # central holes: described once
            cached_hole, database_features = hole, describe(prepared_database, hole)
        query = describe(prepare(images[i:i + 1]), hole)
        nearest = int(((database_features - query) ** 2).sum(axis=1).argmin())
        filled[i] = _composite(images[i:i + 1], hole[None], database[nearest:nearest + 1])[0]
    return filled
